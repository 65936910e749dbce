"""`bundlecast bench` end to end on a real broker: every offered event is answered and each step is reported.

No speed is asserted (speed is measured and recorded in BENCHMARKS.md, never tested).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from stream.bench import AnswerClock, Received
from stream.broker import EmbeddedBroker
from stream.config import StreamSettings


def test_bench_answers_every_offered_event_and_reports_each_step(
    kafka_broker: EmbeddedBroker, artifact_root: Path
) -> None:
    env = os.environ | {
        "BUNDLECAST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "BUNDLECAST_MODEL_DIR": str(artifact_root),
        "BUNDLECAST_METRICS_PORT": "0",
        "BUNDLECAST_PARTITIONS": "2",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "250",
    }
    command = ["bench", "--rate", "50", "--rate", "0", "--seconds", "1", "--burst", "60"]
    result = subprocess.run(
        [sys.executable, "-m", "stream.cli", *command], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "measuring model" in result.stdout and "dim 32, 1 blocks, 20 positions, 1 member" in result.stdout
    rows = {
        cells[0]: cells
        for line in result.stdout.splitlines()
        if line.startswith("│")
        for cells in [[cell.strip() for cell in line.strip("│").split("│")]]
    }
    assert rows["50"][1:3] == ["50", "50"], result.stdout  # offered events, answered events
    assert rows["max"][1:3] == ["60", "60"], result.stdout
    assert all(float(rows[step][7]) > 0 for step in ("50", "max"))  # mean micro-batch size, from /metrics


def test_waiting_for_a_steps_answers_ends_with_its_last_answer_not_an_earlier_or_unrelated_one() -> None:
    async def scenario() -> list[str]:
        clock, seen = AnswerClock(StreamSettings()), []
        clock._note("early", Received(0.0, 1.0))  # answered before the wait began
        waiting = asyncio.create_task(clock.wait_for(["early", "a", "b"], timeout_s=60))
        for event_id in ("a", "other", "b"):
            await asyncio.sleep(0)  # let the waiter run: it must still be waiting until "b"
            seen.append(f"{event_id}:{waiting.done()}")
            clock._note(event_id, Received(0.0, 1.0))
        for _ in range(10):  # a few turns of the loop, no clock: the last answer ends the wait at once
            await asyncio.sleep(0)
        seen.append(f"end:{waiting.done()}")
        await waiting
        await clock.wait_for(["never"], timeout_s=0.01)  # an unanswered id ends the wait at its timeout
        return seen

    assert asyncio.run(scenario()) == ["a:False", "other:False", "b:False", "end:True"]
