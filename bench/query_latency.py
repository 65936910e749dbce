"""Query API latency beside a stream: GET /recommendations/{user_id} at a fixed request rate while the same
worker answers the clickstream at a fixed event rate.

One worker, the embedded Tansu broker, the event producer, the answer reader and the HTTP client all on this
machine. Requests are open-loop: each is sent at its scheduled time whether or not earlier ones returned, so
a stalled worker shows as latency instead of as fewer requests. Users asked about are the replayed events'
users, so every answer reads real session state. Prints one JSON line; `kept_share` is the share of
queries answered with the stream's kept answer (`stream.query.RecentAnswers`).

    python bench/query_latency.py --model ARTIFACT_ROOT [--events-per-s 500] [--queries-per-s 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from stream.bench import AnswerClock, run_step, wait_for_metrics
from stream.broker import free_port
from stream.config import StreamSettings
from stream.launch import ONLINE_RETAIL_SAMPLE, broker_for, worker_process
from stream.replay import load_events


async def ask(
    session: aiohttp.ClientSession, url: str, at: float, latencies: list[float], statuses: Counter
) -> None:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    async with session.get(url) as response:
        await response.read()
        statuses[response.status] += 1
    latencies.append((time.monotonic() - at) * 1e3)


async def query_load(base: str, users: list[str], rate: float, seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    start = time.monotonic() + 0.1
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:
        await asyncio.gather(
            *(
                ask(
                    session,
                    f"{base}/recommendations/{users[n % len(users)]}",
                    start + n / rate,
                    latencies,
                    statuses,
                )
                for n in range(int(rate * seconds))
            )
        )
    values = np.array(latencies)
    return {
        "requests": len(values),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "p50_ms": round(float(np.percentile(values, 50)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def kept_answers(metrics_url: str) -> float:
    """How many user queries the worker has answered with the stream's kept answer so far."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "bundlecast_query_answers_kept_total"
    )


def run_query_load(base: str, users: list[str], rate: float, seconds: float) -> dict[str, object]:
    """`query_load` in a process of its own: the stream's producer and answer reader keep this process's
    event loop busy, and a request that starts late there would count as the worker's latency."""
    return asyncio.run(query_load(base, users, rate, seconds))


async def wait_until_ready(base: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{base}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("the worker never became ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root (the shipped model)")
    parser.add_argument("--data", type=Path, default=ONLINE_RETAIL_SAMPLE, help="events to replay")
    parser.add_argument("--events-per-s", type=float, default=500.0)
    parser.add_argument("--queries-per-s", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    events = load_events(args.data)
    users = list(dict.fromkeys(events["user_id"].astype(str)))
    with (
        tempfile.TemporaryDirectory(prefix="bundlecast-query-bench-") as scratch,
        broker_for(StreamSettings(model_dir=args.model)) as settings,
    ):
        settings = settings.model_copy(
            update={
                "state_dir": Path(scratch) / "state",
                "metrics_port": free_port(),
                "web_port": free_port(),
            }
        )
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
        base = f"http://127.0.0.1:{settings.web_port}"

        async def drive() -> dict[str, object]:
            await wait_for_metrics(metrics_url)
            await wait_until_ready(base)
            async with AnswerClock(settings) as clock:
                # Every user gets state first, as the bench's warm-up does for the stream.
                await run_step(settings, clock, events, 0, len(events), metrics_url, "warmup", timeout_s=300)
                count = int(args.events_per_s * args.seconds)
                kept_before = kept_answers(metrics_url)
                load = asyncio.get_running_loop().run_in_executor(
                    asker, run_query_load, base, users, args.queries_per_s, args.seconds
                )
                stream, queries = await asyncio.gather(
                    run_step(settings, clock, events, args.events_per_s, count, metrics_url, "stream"), load
                )
                kept = kept_answers(metrics_url) - kept_before
                queries["kept_share"] = round(kept / int(args.queries_per_s * args.seconds), 3)
            return {
                "events_per_s": args.events_per_s,
                "queries_per_s": args.queries_per_s,
                "seconds": args.seconds,
                "queries": queries,
                "stream": {
                    "answered": stream.answered,
                    "events": stream.events,
                    "p50_ms": round(stream.p50_ms, 1),
                    "p99_ms": round(stream.p99_ms, 1),
                },
            }

        with (
            worker_process(settings, Path(scratch) / "worker.log"),
            ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as asker,
        ):
            asker.submit(time.sleep, 0).result()  # started and imported before the clock starts
            print(json.dumps(asyncio.run(drive())))


if __name__ == "__main__":
    main()
