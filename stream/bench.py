"""`bundlecast bench`: a real worker on a real broker, driven at fixed rates with real events.

Latency is measured from just before the producer sends an event to the moment its recommendation is
read back (so it includes both Kafka hops); the per-batch time split comes from the worker's own
Prometheus histograms, scraped before and after each step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from stream.config import StreamSettings
from stream.metrics import STAGES
from stream.replay import Record, event_records, produce_at_rate


@dataclass
class StepResult:
    rate: float  # offered events/s (0: as fast as possible)
    events: int
    answered: int
    sustained: float  # answered events / (last answer - first send)
    p50_ms: float
    p99_ms: float
    worker_p99_ms: float  # the answers' own latency_ms: arrival at the worker to publication
    batch_size: float  # mean events per micro-batch
    batch_users: float  # mean users answered per micro-batch
    stage_ms: dict[str, float]  # mean milliseconds per batch, by stage


SCRAPED = ("bundlecast_stage_duration_seconds_", "bundlecast_batch_size_events_", "bundlecast_batch_users_")


def scrape(metrics_url: str) -> dict[tuple[str, str], float]:
    """(sample name, stage label) -> value for the batch and stage histograms."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(SCRAPED):
                values[(sample.name, sample.labels.get("stage", ""))] = sample.value
    return values


async def wait_for_metrics(metrics_url: str, timeout_s: float = 120.0) -> None:
    """Wait until the worker serves /metrics (it starts serving once its model is loaded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            scrape(metrics_url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def _step_records(events: pd.DataFrame, count: int, run_id: str) -> Iterator[Record]:
    """`count` real events, cycling through the data set, with ids unique to this step."""
    rows = events.iloc[np.resize(np.arange(len(events)), count)]
    return event_records(rows.reset_index(drop=True), run_id)


class Received(NamedTuple):
    at: float  # time.monotonic() when the answer was read
    worker_ms: float  # the answer's own latency_ms


class AnswerClock:
    """Reads the output topic and notes when each event's recommendation arrived.

    Waiting for a step's answers costs one set lookup per answer read: the bench shares the worker's cores,
    and rescanning the unanswered ids every 50 ms took 6.5% of the run's CPU samples flat out.
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.received: dict[str, Received] = {}  # event_id -> its first answer
        self._waiting: set[str] = set()
        self._all_answered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def wait_for(self, event_ids: Iterable[str], timeout_s: float) -> None:
        """Return once every one of `event_ids` has an answer, or after `timeout_s`."""
        self._waiting = {event_id for event_id in event_ids if event_id not in self.received}
        self._all_answered.clear()
        if self._waiting:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_answered.wait(), timeout_s)

    def _note(self, event_id: str, received: Received) -> None:
        self.received.setdefault(event_id, received)
        if event_id in self._waiting:
            self._waiting.discard(event_id)
            if not self._waiting:
                self._all_answered.set()

    async def __aenter__(self) -> AnswerClock:
        consumer = AIOKafkaConsumer(
            self.settings.output_topic,
            **self.settings.aiokafka_options(),
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
        await consumer.start()

        async def run() -> None:
            try:
                while True:
                    for messages in (await consumer.getmany(timeout_ms=100)).values():
                        now = time.monotonic()
                        for message in messages:
                            answer = orjson.loads(message.value)
                            self._note(answer["event_id"], Received(now, answer["latency_ms"]))
            finally:
                await consumer.stop()

        self._task = asyncio.create_task(run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def run_step(
    settings: StreamSettings,
    clock: AnswerClock,
    events: pd.DataFrame,
    rate: float,
    count: int,
    metrics_url: str,
    run_id: str,
    timeout_s: float = 120.0,
) -> StepResult:
    sent: dict[str, float] = {}
    before = scrape(metrics_url)

    def note(record: Record) -> None:
        sent[orjson.loads(record[1])["event_id"]] = time.monotonic()

    # Built before the clock starts: producers are other machines, and this one's cycles are the worker's.
    records = list(_step_records(events, count, run_id))
    await produce_at_rate(settings, iter(records), rate, note)
    await clock.wait_for(sent, timeout_s)
    after = scrape(metrics_url)
    answered = [event_id for event_id in sent if event_id in clock.received]
    latencies = np.array([clock.received[e].at - sent[e] for e in answered]) * 1e3
    span = max(clock.received[e].at for e in answered) - min(sent.values()) if answered else float("nan")

    def delta(name: str, stage: str = "") -> float:
        return after.get((name, stage), 0.0) - before.get((name, stage), 0.0)

    batches = delta("bundlecast_batch_size_events_count")
    return StepResult(
        rate=rate,
        events=len(sent),
        answered=len(answered),
        sustained=len(answered) / span if answered else 0.0,
        p50_ms=float(np.percentile(latencies, 50)) if answered else float("nan"),
        p99_ms=float(np.percentile(latencies, 99)) if answered else float("nan"),
        worker_p99_ms=float(np.percentile([clock.received[e].worker_ms for e in answered], 99))
        if answered
        else float("nan"),
        batch_size=delta("bundlecast_batch_size_events_sum") / batches if batches else float("nan"),
        batch_users=delta("bundlecast_batch_users_sum") / batches if batches else float("nan"),
        stage_ms={
            stage: 1e3 * delta("bundlecast_stage_duration_seconds_sum", stage) / batches if batches else 0.0
            for stage in STAGES
        },
    )
