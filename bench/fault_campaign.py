"""Fault campaign against `bundlecast worker` on a real Tansu broker and real RocksDB (BENCHMARKS.md,
"Robustness"). Each phase gets a fresh broker and state dir; inputs are seeded, so a run repeats.

- malformed: valid events among fuzzed malformed ones and the known poisons; every valid event must be
  answered, every other one dead-lettered, and the worker must live on.
- kills: events at a fixed rate while the worker is killed (SIGKILL) at seeded random moments and
  restarted on the same state dir: lost events, extra answers (at-least-once duplicates), crash loops.
- sweep: live answers' latency while the expiry sweep deletes 100,000 idle users, against the same run's
  answers outside the sweep.
- failover: two workers share the input, each killed once mid-stream and restarted after the other took
  over its partitions: lost events and extra answers.
- erasure: a forget request (as `bundlecast forget` sends it) for a user with history, then an event of
  theirs: seconds until that event's answer, which must use none of the old history.

    python bench/fault_campaign.py --model DIR [--phase malformed --phase kills --phase erasure]
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import datetime
from pathlib import Path

import typer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from model.artifacts import resolve_version
from stream.broker import EmbeddedBroker, embedded_broker, free_port
from stream.config import StreamSettings
from stream.replay import request_erasure
from stream.state import UserState
from stream.topics import ensure_topics

Record = tuple[bytes | None, bytes]
app = typer.Typer(add_completion=False)


def event(n: int, user: str, item: str, ts: float = 1_300_000_000) -> Record:
    body = {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": "view", "ts": ts + n}
    return user.encode(), json.dumps(body).encode()


def malformed(rng: random.Random, valid: Record) -> Record:
    """A malformed message: a valid one with bytes flipped or cut, a field broken, or a known poison."""
    key, value = valid
    kind = rng.randrange(40)
    if kind < 8:
        data = bytearray(value)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return key, bytes(data)
    if kind < 14:
        return key, value[: rng.randrange(1, len(value) - 1)]
    if kind < 18:
        return None, value  # no key
    if kind < 22:
        return key, b"[" * 30_000 + b"]" * 30_000  # deeper than the parser's recursion
    if kind == 22:  # oversized, up to ~1 MB (its dead letter once exceeded the client's request limit)
        return key, value[:-1] + b', "pad": "' + b"x" * rng.choice([70_000, 300_000, 1_000_000]) + b'"}'
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
                "BUNDLECAST_WEB_PORT": "0",
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
    # A mutation can leave a message valid (a flipped byte inside an item id or a digit of ts): it is then
    # answered (under its own event id, often a valid one's), not dead-lettered. Every message is either.
    answers = sum(counts.values())
    return {
        "valid": valid_count,
        "malformed": bad_count,
        "valid_answered": len(expected & set(counts)),
        "dead_letters": len(records["clickstream.dlq"]),
        "mutations_answered_as_valid": answers - valid_count,
        "unaccounted": valid_count + bad_count - answers - len(records["clickstream.dlq"]),
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


def phase_failover(model: Path, scratch: Path, events: int, rate: float, **settings: str) -> dict:
    """Two workers share the input; each is killed (SIGKILL) once mid-stream and restarted on its own
    state dir after the survivor has taken over its partitions: lost events and extra answers."""
    items = items_of(model, 100)
    stream = [event(n, f"user{n % 200}", items[n % 100]) for n in range(events)]
    expected = {f"e{n}" for n in range(events)}
    with embedded_broker() as broker:
        asyncio.run(ensure_topics(StreamSettings(kafka_bootstrap=broker.bootstrap, partitions=4)))
        log = scratch / "failover.log"
        pair = [Worker(broker, model, scratch / name, log, **settings) for name in ("a", "b")]
        time.sleep(12)  # both loaded and in the group

        async def stream_and_fail_over() -> None:
            producing = asyncio.create_task(produce(broker, stream, rate))
            for worker, kill_at, restart_at in ((pair[0], 3.0, 10.0), (pair[1], 15.0, 22.0)):
                await asyncio.sleep(kill_at - (time.monotonic() - started))
                worker.kill()
                await asyncio.sleep(restart_at - (time.monotonic() - started))
                worker.start()
            await producing

        started = time.monotonic()
        asyncio.run(stream_and_fail_over())
        records = asyncio.run(read(broker, lambda r: set(answered(r)) >= expected, timeout_s=300))
        alive = [worker.process.poll() is None for worker in pair]
        for worker in pair:
            worker.kill()
    counts = answered(records)
    return {
        "events": events,
        "rate": rate,
        "fail_overs": "a killed at 3 s, back at 10 s; b killed at 15 s, back at 22 s",
        "lost": len(expected - set(counts)),
        "extra_answers": sum(counts.values()) - len(set(counts)),
        "extra_share": round((sum(counts.values()) - len(set(counts))) / events, 4),
        "workers_alive_at_end": alive,
        "settings": settings,
    }


def phase_erasure(model: Path, scratch: Path, trials: int) -> dict:
    """Seconds from a forget request (sent as `bundlecast forget` sends it) to the user's next answer, which
    must use none of their history; and one run of the CLI itself, whose start-up (imports) is timed apart."""
    items = items_of(model, 100)
    seconds = []
    with embedded_broker() as broker:
        worker = Worker(broker, model, scratch / "state", scratch / "erasure.log")
        asyncio.run(produce(broker, [event(-1, "warm", items[0])]))
        asyncio.run(read(broker, lambda r: "e-1" in answered(r), timeout_s=120, settle_s=0))
        settings = StreamSettings(kafka_bootstrap=broker.bootstrap)
        for trial in range(trials):
            user, base = f"gdpr{trial}", 1000 * (trial + 1)
            asyncio.run(produce(broker, [event(base + n, user, items[n]) for n in range(5)]))
            asyncio.run(read(broker, lambda r, b=base: f"e{b + 4}" in answered(r), timeout_s=60, settle_s=0))
            started = time.monotonic()
            asyncio.run(request_erasure(settings, [user]))
            asyncio.run(produce(broker, [event(base + 100, user, "unknown-item")]))
            records = asyncio.run(
                read(broker, lambda r, p=base + 100: f"e{p}" in answered(r), timeout_s=30, settle_s=0)
            )
            seconds.append(round(time.monotonic() - started, 3))
            (answer,) = [r for r in records["recommendations"] if r["event_id"] == f"e{base + 100}"]
            assert answer["items"][0]["reasons"]["code"] == "popular", f"{user}'s history survived: {answer}"
        started = time.monotonic()
        env = os.environ | {"BUNDLECAST_KAFKA_BOOTSTRAP": broker.bootstrap}
        subprocess.run([sys.executable, "-m", "stream.cli", "forget", "gdpr0"], env=env, check=True)
        cli_s = round(time.monotonic() - started, 2)
        worker.kill()
    return {"trials": trials, "request_to_fresh_answer_s": seconds, "max_s": max(seconds), "cli_run_s": cli_s}


def published(port: int) -> float:
    """The worker's bundlecast_recommendations_published_total (0 before its metrics server is up)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            lines = response.read().decode().splitlines()
    except OSError:
        return 0.0
    return next(
        (
            float(line.split()[-1])
            for line in lines
            if line.startswith("bundlecast_recommendations_published_total")
        ),
        0.0,
    )


async def tail_from_now(broker: EmbeddedBroker, topic: str, stop: asyncio.Event) -> list[tuple[int, bytes]]:
    """(broker timestamp ms, value) of the records a topic gets from now until `stop`, then 3 s more."""
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap)
    await consumer.start()
    records: list[tuple[int, bytes]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            await consumer.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        until = None
        while until is None or time.monotonic() < until:
            for messages in (await consumer.getmany(timeout_ms=200)).values():
                records.extend((m.timestamp, m.value) for m in messages)
            if until is None and stop.is_set():
                until = time.monotonic() + 3
    finally:
        await consumer.stop()
    return records


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else float("nan")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return round(ordered[int(0.99 * (len(ordered) - 1))], 2) if ordered else float("nan")


def store_idle_users(state_dir: Path, users: int, partitions: int) -> None:
    """Write `users` idle sessions (last updated at the epoch) straight into the worker's RocksDB partitions,
    opened as Faust opens them, as if a worker had held them for weeks: the first sweep deletes them all.
    (Producing 100k users' events through a worker takes minutes, and they would expire piecemeal.)"""
    from faust.stores.rocksdb import RocksDBOptions

    state = json.dumps(UserState(cart=("85123A",), updated_at=0.0, sessions=1).to_json()).encode()
    tables = state_dir / "v1" / "tables"
    tables.mkdir(parents=True)
    for partition in range(partitions):
        db = RocksDBOptions(use_rocksdict=True).open(tables / f"sessions-{partition}.db")
        for n in range(partition, users, partitions):
            db.put(f"idle{n:07}".encode(), state)
        db.close()


def phase_sweep(model: Path, scratch: Path, users: int, rate: float, seconds: float) -> dict:
    """Live answers' latency (in-message `latency_ms`: arrival at the worker to publication) while the
    expiry sweep deletes `users` idle users, against the rest of the same run. The sweep's window is where
    its tombstones' timestamps fall on the changelog."""
    items = items_of(model, 100)
    port, partitions = free_port(), 6
    if users:
        store_idle_users(scratch / "state", users, partitions)
    with embedded_broker() as broker:
        # The worker's partition count, before a producer makes Tansu auto-create the input with 4.
        asyncio.run(ensure_topics(StreamSettings(kafka_bootstrap=broker.bootstrap, partitions=partitions)))
        # A 40 s TTL sweeps every 20 s: the first sweep, about 20 s after start, finds every stored user idle.
        settings = {"state_ttl_s": "40", "metrics_port": str(port), "partitions": str(partitions)}
        worker = Worker(broker, model, scratch / "state", scratch / "sweep.log", **settings)
        live = [event(n, f"live{n % 500}", items[n % 100]) for n in range(int(rate * seconds))]

        async def measure() -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
            await produce(
                broker, [event(-1, "warm", items[0])]
            )  # creates nothing: the worker made the topics
            stop = asyncio.Event()
            answers = asyncio.create_task(tail_from_now(broker, "recommendations", stop))
            changelog = asyncio.create_task(tail_from_now(broker, "bundlecast-sessions-changelog", stop))
            await asyncio.sleep(2)  # both readers are at the end
            await produce(broker, live, rate)
            stop.set()
            return await answers, await changelog

        while published(port) < 1:  # the worker answers (its topics exist, its partitions are assigned)
            asyncio.run(produce(broker, [event(-2, "probe", items[0])]))
            time.sleep(1)
        answers, changelog = asyncio.run(measure())
        worker.kill()
    tombstones = [stamp for stamp, value in changelog if value is None]
    live_answers = [json.loads(value) for _, value in answers]
    live_answers = [a for a in live_answers if a["user_id"].startswith("live")]
    if not tombstones:  # the baseline (no idle users), or no sweep in the window
        latencies = [answer["latency_ms"] for answer in live_answers]
        return {
            "idle_users": users,
            "deleted": 0,
            "live_rate": rate,
            "live_answers": len(live_answers),
            "p50_ms": median(latencies),
            "p99_ms": p99(latencies),
        }
    start, end = min(tombstones) / 1000, max(tombstones) / 1000
    during, outside = [], []
    for answer in live_answers:
        at = datetime.fromisoformat(answer["generated_at"]).timestamp()
        (during if start <= at <= end + 0.05 else outside).append(answer["latency_ms"])
    return {
        "idle_users": users,
        "deleted": len(tombstones),
        "sweep_window_s": round(end - start, 2),
        "live_rate": rate,
        "live_answers": len(live_answers),
        "answers_during": len(during),
        "p50_ms_during_sweep": median(during),
        "p99_ms_during_sweep": p99(during),
        "p50_ms_outside": median(outside),
        "p99_ms_outside": p99(outside),
    }


@app.command()
def main(
    model: Path = typer.Option(..., exists=True, help="Artifact root the worker serves."),
    phase: list[str] = typer.Option(
        ["malformed", "kills", "failover", "erasure", "sweep"], help="Phases to run (repeat)."
    ),
    seed: int = typer.Option(22, help="Seed of the fuzzing and of the kill moments."),
    commit_interval_s: str = typer.Option(
        "", help="BUNDLECAST_COMMIT_INTERVAL_S for the kills and failover phases."
    ),
    kills: int = typer.Option(5, help="SIGKILLs during the kills phase's 5,000 events at 300/s."),
    sweep_rate: float = typer.Option(300.0, help="Live events/s during the sweep phase."),
    sweep_users: int = typer.Option(100_000, help="Idle users the sweep deletes (0: a baseline run)."),
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
                results[name] = phase_kills(model, folder, 5_000, 300.0, kills, seed, **extra)
            elif name == "erasure":
                results[name] = phase_erasure(model, folder, 5)
            elif name == "failover":
                extra = {"commit_interval_s": commit_interval_s} if commit_interval_s else {}
                results[name] = phase_failover(model, folder, 9_000, 300.0, **extra)
            elif name == "sweep":
                results[name] = phase_sweep(model, folder, sweep_users, sweep_rate, 60.0)
            print(json.dumps({name: results[name]}), flush=True)


if __name__ == "__main__":
    app()
