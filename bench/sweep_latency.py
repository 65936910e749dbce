"""How much an expiry sweep of 100k users delays answering (BENCHMARKS.md, "Robustness").

A real RocksDB (rocksdict, as Faust's store opens it) holds 100,000 idle users' states, as the worker
stores them. The worker's sweep (`stream.state.sweep_expired`, deleting with RocksDB deletes) shares one
event loop with an "answering" task that wakes every 5 ms and does 1 ms of work, like small micro-batches
taking a fifth of the loop. Reported: the answering task's lateness (how much later than asked it woke)
p50/p99/max, without a sweep and during one. This measures the event loop the worker's answers wait on;
it is not the end-to-end latency of a whole worker.

    python bench/sweep_latency.py [--users 100000]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time

import rocksdict
import typer

from stream.state import UserState, sweep_expired

app = typer.Typer(add_completion=False)
TICK_S, WORK_S = 0.005, 0.001  # a batch of 1 ms every 5 ms: a fifth of the loop, a moderately loaded worker


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def answering(lateness: list[float], stop: asyncio.Event) -> None:
    """Wake every TICK_S and work WORK_S; a wake-up's lateness is how long a batch that became ready then
    would wait for the event loop."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        asleep = loop.time()
        await asyncio.sleep(TICK_S)
        lateness.append(max(0.0, loop.time() - asleep - TICK_S))
        busy(WORK_S)


def quantiles(values: list[float]) -> dict[str, float]:
    ms = sorted(v * 1000 for v in values)
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 3),
        "p99_ms": round(ms[int(0.99 * (len(ms) - 1))], 3),
        "max_ms": round(ms[-1], 3),
    }


async def run(users: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        db = rocksdict.Rdict(folder)
        state = json.dumps(UserState(updated_at=0.0).to_json() | {"cart": ["85123A"] * 5}).encode()
        for n in range(users):
            db[f"user-{n:07}".encode()] = state

        baseline: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(answering(baseline, stop))
        await asyncio.sleep(2.0)
        stop.set()
        await task

        during: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(answering(during, stop))
        started = time.perf_counter()
        seen, deleted = await sweep_expired(
            [0],
            lambda _, key: db.items(from_key=key),
            lambda _, key: db.delete(key),
            time.time,
            ttl_s=3600,
        )
        sweep_s = time.perf_counter() - started
        stop.set()
        await task
        db.close()
    return {
        "users": users,
        "seen": seen,
        "deleted": deleted,
        "sweep_s": round(sweep_s, 2),
        "without_sweep": quantiles(baseline),
        "during_sweep": quantiles(during),
    }


@app.command()
def main(users: int = typer.Option(100_000, help="Idle users stored, all deleted by the sweep.")) -> None:
    print(json.dumps(asyncio.run(run(users))))


if __name__ == "__main__":
    app()
