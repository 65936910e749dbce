"""What each stage of the worker costs alone, at its own best rate, to set beside the whole worker.

In one run, on the same machine and the same events (the bundled online-retail sample, cycled):
- kafka: consume the events through aiokafka and produce one 9 KB answer per event through the answers'
  librdkafka client, no work in between (the transport's floor; the worker consumes with the same client
  under Faust and answers through `stream.transport.AnswerProducer`, micro-batch by micro-batch);
- state, model, faiss, bundles: `Pipeline.admit` and `Pipeline.answer` on micro-batches of `--batch` events,
  each stage timed by the answer seam's own stage hook.
Prints one JSON line: events/s of each stage alone, and the events/s all of them allow in sequence (1 / the
sum of their per-event costs). Divide by the worker's flat-out rate (`bundlecast bench`) for the overhead
ratio the serving-speed issue asks about.

    python bench/stage_costs.py --model ARTIFACT_ROOT [--events 10000] [--batch 230]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from model import Recommender
from stream.config import StreamSettings
from stream.launch import ONLINE_RETAIL_SAMPLE, broker_for
from stream.pipeline import Admitted, Pipeline, query_for
from stream.replay import event_records, load_events
from stream.transport import AnswerProducer

ANSWER_BYTES = 9 * 1024  # a complete answer (20 explained items, 3 explained bundles)


def records(count: int) -> list[tuple[bytes, bytes]]:
    events = load_events(ONLINE_RETAIL_SAMPLE)
    rows = events.iloc[np.resize(np.arange(len(events)), count)].reset_index(drop=True)
    return [(key or b"", value) for key, value in event_records(rows, "cost")]


def model_stages(model_dir: Path, batch: list[tuple[bytes, bytes]], size: int) -> dict[str, float]:
    """Seconds per stage over all events, micro-batches of `size`."""
    torch.set_num_threads(1)
    recommender = Recommender.load(model_dir)
    recommender.warm_up()
    pipeline, states, spent = Pipeline(StreamSettings()), {}, defaultdict(float)

    @contextmanager
    def timed(stage: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        spent[stage] += time.perf_counter() - started

    for start in range(0, len(batch), size):
        with timed("state"):
            admitted = [
                pipeline.admit(key, value, states, 0.0, 1.3e9) for key, value in batch[start : start + size]
            ]
        valid = [a for a in admitted if isinstance(a, Admitted)]
        last = {a.event.user_id: a.state for a in valid}  # one answer per user, as the worker answers
        recommender.answer_batch([query_for(state) for state in last.values()], stage=timed)
    return dict(spent)


async def kafka_floor(settings: StreamSettings, batch: list[tuple[bytes, bytes]]) -> float:
    """Seconds to consume the events and produce one answer-sized message per event, no work between."""
    producer = AIOKafkaProducer(**settings.aiokafka_options(), linger_ms=5, max_batch_size=512 * 1024)
    await producer.start()
    for key, value in batch:
        await producer.send("cost-in", key=key, value=value)
    await producer.flush()
    await producer.stop()
    consumer = AIOKafkaConsumer("cost-in", **settings.aiokafka_options(), auto_offset_reset="earliest")
    await consumer.start()
    answers = AnswerProducer(settings.answer_client_options())
    await answers.start()
    answer = b"x" * ANSWER_BYTES
    started, seen = time.perf_counter(), 0
    try:
        while seen < len(batch):
            for messages in (await consumer.getmany(timeout_ms=200, max_records=1000)).values():
                await answers.put("cost-out", [(message.key, answer) for message in messages])
                seen += len(messages)
        await answers.drain()
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await answers.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root (the shipped model)")
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=230, help="events per micro-batch (the worker's at max)")
    args = parser.parse_args()
    batch = records(args.events)
    spent = model_stages(args.model, batch, args.batch)
    with broker_for(StreamSettings()) as settings:
        spent["kafka"] = asyncio.run(kafka_floor(settings, batch))
    rates = {stage: round(args.events / seconds) for stage, seconds in spent.items()}
    print(
        json.dumps(
            {
                "events": args.events,
                "batch": args.batch,
                "events_per_s_alone": rates,
                "events_per_s_all_in_sequence": round(args.events / sum(spent.values())),
            }
        )
    )


if __name__ == "__main__":
    main()
