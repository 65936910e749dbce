"""Fault campaign against `bundlecast worker` on a real Tansu broker and real RocksDB (BENCHMARKS.md,
"Robustness"). Each phase gets a fresh broker and state dir; inputs are seeded, so a run repeats.

- malformed: valid events among fuzzed malformed ones and the known poisons; every valid event must be
  answered, every other one dead-lettered, and the worker must live on.
- kills: events at a fixed rate while the worker is killed (SIGKILL) at seeded random moments and
  restarted on the same state dir: lost events, extra answers (at-least-once duplicates), crash loops.
- erasure: `bundlecast forget` for a user with history, then an event of theirs: seconds until an answer
  that uses none of the old history.

    python bench/fault_campaign.py --model DIR [--phase malformed --phase kills --phase erasure]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from model.artifacts import resolve_version
from stream.broker import EmbeddedBroker, embedded_broker

Record = tuple[bytes | None, bytes]
app = typer.Typer(add_completion=False)


def event(n: int, user: str, item: str, ts: float = 1_300_000_000) -> Record:
    body = {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": "view", "ts": ts + n}
    return user.encode(), json.dumps(body).encode()


def malformed(rng: random.Random, valid: Record) -> Record:
    """A malformed message: a valid one with bytes flipped or cut, a field broken, or a known poison."""
    key, value = valid
    kind = rng.randrange(8)
    if kind == 0:
        data = bytearray(value)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return key, bytes(data)
    if kind == 1:
        return key, value[: rng.randrange(1, len(value) - 1)]
    if kind == 2:
        return None, value  # no key
    if kind == 3:
        return key, b"[" * 30_000 + b"]" * 30_000  # deeper than the parser's recursion
    if kind == 4:
        return key, value[:-1] + b', "pad": "' + b"x" * rng.randint(70_000, 1_000_000) + b'"}'  # oversized
    body = json.loads(value)
    field = rng.choice(["event_id", "user_id", "item_id", "type", "ts", "price"])
    body[field] = rng.choice([None, 7, "", "x\ud800", "x" * 300, 10**400, -1, "View", [1]])
    return key, json.dumps(body).encode()


class Worker:
    def __init__(self, broker: EmbeddedBroker, model: Path, state: Path, log: Path, **settings: str) -> None:
        self.env = (
            os.environ
            | {
                "BUNDLECAST_KAFKA_BOOTSTRAP": broker.bootstrap,
                "BUNDLECAST_MODEL_DIR": str(model),
                "BUNDLECAST_STATE_DIR": str(state),
                "BUNDLECAST_METRICS_PORT": "0",
                "OMP_NUM_THREADS": "1",
            }
            | {f"BUNDLECAST_{k.upper()}": v for k, v in settings.items()}
        )
        self.log = log
        self.starts = 0
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        with self.log.open("ab") as output:
            command = [sys.executable, "-m", "stream.cli", "worker", "--log-level", "info"]
            self.process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT)
        return self.process

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


async def produce(broker: EmbeddedBroker, records: list[Record], rate: float = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        started = time.monotonic()
        for n, (key, value) in enumerate(records):
            if rate and (ahead := started + n / rate - time.monotonic()) > 0:
                await asyncio.sleep(ahead)
            await producer.send("clickstream", key=key, value=value)
        await producer.flush()
    finally:
        await producer.stop()


async def read(broker: EmbeddedBroker, done: object, timeout_s: float, settle_s: float = 3.0) -> dict:
    """Recommendations and dead letters from the start until `done(records)`, then `settle_s` more."""
    consumer = AIOKafkaConsumer(
        "recommendations", "clickstream.dlq", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    records: dict[str, list[dict]] = {"recommendations": [], "clickstream.dlq": []}
    await consumer.start()
    try:
        deadline, settled = time.monotonic() + timeout_s, None
        while time.monotonic() < (settled or deadline):
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                records[tp.topic].extend(json.loads(m.value) | {"_seen": time.monotonic()} for m in messages)
            if settled is None and done(records):  # type: ignore[operator]
                settled = time.monotonic() + settle_s
    finally:
        await consumer.stop()
    return records


def answered(records: dict) -> Counter[str]:
    return Counter(r["event_id"] for r in records["recommendations"])


def items_of(model: Path, n: int) -> list[str]:
    return json.loads((resolve_version(model) / "vocab.json").read_text())[:n]


def phase_malformed(model: Path, scratch: Path, valid_count: int, bad_count: int, seed: int) -> dict:
    rng, items = random.Random(seed), items_of(model, 100)
    valid = [event(n, f"user{n % 50}", items[n % 100]) for n in range(valid_count)]
    bad = [malformed(rng, rng.choice(valid)) for _ in range(bad_count)]
    stream = [*valid, *bad]
    rng.shuffle(stream)
    expected = {f"e{n}" for n in range(valid_count)}
    with embedded_broker() as broker:
        worker = Worker(broker, model, scratch / "state", scratch / "malformed.log")
        started = time.monotonic()
        asyncio.run(produce(broker, stream))
        records = asyncio.run(read(broker, lambda r: set(answered(r)) >= expected, timeout_s=600))
        elapsed = time.monotonic() - started
        alive = worker.process.poll() is None
        worker.kill()
    counts = answered(records)
    # A mutation can leave a message valid (a flipped byte inside an item id): answered, not a letter.
    extra_valid = {e for e in counts if e not in expected}
    return {
        "valid": valid_count,
        "malformed": bad_count,
        "valid_answered": len(expected & set(counts)),
        "dead_letters": len(records["clickstream.dlq"]),
        "mutations_still_valid": len(extra_valid),
        "letters_plus_still_valid": len(records["clickstream.dlq"]) + sum(counts[e] for e in extra_valid),
        "largest_letter_bytes": max(len(json.dumps(r)) for r in records["clickstream.dlq"]),
        "reasons": dict(Counter(r["reason"] for r in records["clickstream.dlq"])),
        "worker_alive": alive,
        "worker_starts": worker.starts,
        "seconds": round(elapsed, 1),
    }


def phase_kills(
    model: Path, scratch: Path, events: int, rate: float, kills: int, seed: int, **settings: str
) -> dict:
    rng, items = random.Random(seed), items_of(model, 100)
    stream = [event(n, f"user{n % 200}", items[n % 100]) for n in range(events)]
    duration = events / rate
    kill_at = sorted(rng.uniform(0.05 * duration, 0.95 * duration) for _ in range(kills))
    expected = {f"e{n}" for n in range(events)}
    with embedded_broker() as broker:
        worker = Worker(broker, model, scratch / "state", scratch / "kills.log", **settings)
        asyncio.run(read(broker, lambda r: False, timeout_s=0.1, settle_s=0))  # topics exist
        time.sleep(8)  # loaded and joined before the clock starts (its first answers are not measured)

        async def stream_and_kill() -> None:
            producing = asyncio.create_task(produce(broker, stream, rate))
            started = time.monotonic()
            for at in kill_at:
                await asyncio.sleep(max(0.0, started + at - time.monotonic()))
                worker.kill()
                worker.start()
            await producing

        asyncio.run(stream_and_kill())
        records = asyncio.run(read(broker, lambda r: set(answered(r)) >= expected, timeout_s=300))
        alive = worker.process.poll() is None
        worker.kill()
    counts = answered(records)
    return {
        "events": events,
        "rate": rate,
        "kills": kills,
        "kill_at_s": [round(at, 1) for at in kill_at],
        "lost": len(expected - set(counts)),
        "extra_answers": sum(counts.values()) - len(set(counts)),
        "extra_share": round((sum(counts.values()) - len(set(counts))) / events, 4),
        "events_answered_more_than_once": sum(1 for c in counts.values() if c > 1),
        "worker_alive_at_end": alive,
        "consistency_errors_in_log": (scratch / "kills.log")
        .read_text(errors="replace")
        .count("ConsistencyError"),
        "settings": settings,
    }


def phase_erasure(model: Path, scratch: Path, trials: int) -> dict:
    items = items_of(model, 100)
    seconds = []
    with embedded_broker() as broker:
        worker = Worker(broker, model, scratch / "state", scratch / "erasure.log")
        asyncio.run(produce(broker, [event(-1, "warm", items[0])]))
        asyncio.run(read(broker, lambda r: "e-1" in answered(r), timeout_s=120, settle_s=0))
        env = os.environ | {"BUNDLECAST_KAFKA_BOOTSTRAP": broker.bootstrap}
        for trial in range(trials):
            user, base = f"gdpr{trial}", 1000 * (trial + 1)
            asyncio.run(produce(broker, [event(base + n, user, items[n]) for n in range(5)]))
            asyncio.run(read(broker, lambda r, b=base: f"e{b + 4}" in answered(r), timeout_s=60, settle_s=0))
            started = time.monotonic()
            subprocess.run([sys.executable, "-m", "stream.cli", "forget", user], env=env, check=True)
            # Probe until the user's answer uses none of the old history (popularity: no known item).
            for probe in range(1, 200):
                probe_id = base + 100 + probe
                asyncio.run(produce(broker, [event(probe_id, user, f"unknown-{probe}")]))
                records = asyncio.run(
                    read(broker, lambda r, p=probe_id: f"e{p}" in answered(r), timeout_s=30, settle_s=0)
                )
                (answer,) = [r for r in records["recommendations"] if r["event_id"] == f"e{probe_id}"]
                if answer["items"][0]["reasons"]["code"] == "popular":
                    seconds.append(round(time.monotonic() - started, 2))
                    break
        worker.kill()
    return {"trials": trials, "seconds_to_a_fresh_answer": seconds, "max_s": max(seconds)}


@app.command()
def main(
    model: Path = typer.Option(..., exists=True, help="Artifact root the worker serves."),
    phase: list[str] = typer.Option(["malformed", "kills", "erasure"], help="Phases to run (repeat)."),
    seed: int = typer.Option(22, help="Seed of the fuzzing and of the kill moments."),
    commit_interval_s: str = typer.Option("", help="BUNDLECAST_COMMIT_INTERVAL_S for the kills phase."),
) -> None:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bundlecast-faults-") as scratch:
        for name in phase:
            folder = Path(scratch) / name
            folder.mkdir()
            if name == "malformed":
                results[name] = phase_malformed(model, folder, 2_000, 10_000, seed)
            elif name == "kills":
                extra = {"commit_interval_s": commit_interval_s} if commit_interval_s else {}
                results[name] = phase_kills(model, folder, 5_000, 300.0, 5, seed, **extra)
            elif name == "erasure":
                results[name] = phase_erasure(model, folder, 5)
            print(json.dumps({name: results[name]}), flush=True)


if __name__ == "__main__":
    app()
