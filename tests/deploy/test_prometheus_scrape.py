"""A real Prometheus server scrapes a real `bundlecast worker` during a short replay on a real broker.

The counts Prometheus reports through its HTTP API must equal what was produced, every dashboard and
alert query must be accepted by the server, and every metric they select must be among the names it
scraped from the worker.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from model.artifacts import resolve_version
from stream.broker import EmbeddedBroker
from stream.config import StreamSettings
from stream.launch import worker_process
from tests.deploy.conftest import require_binary
from tests.deploy.expressions import alert_expressions, dashboard_expressions, metric_names
from tests.deploy.prometheus_server import (
    SCRAPE_JOB,
    free_port,
    label_values,
    query,
    running_prometheus,
    scalar,
    wait_until,
)

pytestmark = pytest.mark.slow

EVENT_TYPES_CYCLE = ["view", "view", "view", "add_to_cart", "view", "purchase", "remove_from_cart"]
MALFORMED = {
    "not_json": b"{broken",
    "unknown_type": json.dumps({"event_id": "m1", "user_id": "u", "item_id": "i", "type": "click", "ts": 1}),
    "missing_field": json.dumps({"event_id": "m2", "user_id": "u", "type": "view", "ts": 1}),
}
N_VALID = 70


@pytest.fixture
def worker_metrics_port(kafka_broker: EmbeddedBroker, artifact_root: Path, tmp_path: Path) -> Iterator[int]:
    """A `bundlecast worker` process serving /metrics on a free port; stopped with SIGTERM afterwards."""
    port = free_port()
    settings = StreamSettings(
        kafka_bootstrap=kafka_broker.bootstrap,
        model_dir=artifact_root,
        state_dir=tmp_path / "state",
        metrics_port=port,
        web_port=0,
        partitions=2,
        batch_linger_ms=20,
    )
    with worker_process(settings, tmp_path / "worker.log"):
        yield port


def replay(broker: EmbeddedBroker, items: list[str]) -> Counter[str]:
    """Produce N_VALID valid events over six users plus one message per malformed reason; count types."""
    valid = [
        {
            "event_id": f"e{n}",
            "user_id": f"user{n % 6}",
            "item_id": items[n % len(items)],
            "type": EVENT_TYPES_CYCLE[n % len(EVENT_TYPES_CYCLE)],
            "ts": 1_300_000_000 + n,
        }
        for n in range(N_VALID)
    ]
    records = [(event["user_id"].encode(), json.dumps(event).encode()) for event in valid]
    records[N_VALID // 2 : N_VALID // 2] = [
        (b"user0", body if isinstance(body, bytes) else body.encode()) for body in MALFORMED.values()
    ]

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
        await producer.start()
        try:
            for key, value in records:
                await producer.send("clickstream", key=key, value=value)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(produce())
    return Counter(event["type"] for event in valid)


def test_prometheus_sees_the_replay_through_the_worker_metrics(
    kafka_broker: EmbeddedBroker, artifact_root: Path, worker_metrics_port: int, tmp_path: Path
) -> None:
    binary = require_binary("prometheus")
    version_dir = resolve_version(artifact_root)
    vocab = json.loads((version_dir / "vocab.json").read_text())
    with running_prometheus(binary, [f"127.0.0.1:{worker_metrics_port}"], tmp_path / "prometheus") as url:
        wait_until(lambda: scalar(url, f'up{{job="{SCRAPE_JOB}"}}') == 1, 120, "the worker's first scrape")
        sent_types = replay(kafka_broker, vocab[:25])

        def everything_scraped() -> bool:
            return (
                scalar(url, "sum(bundlecast_recommendations_published_total)") == N_VALID
                and scalar(url, "sum(bundlecast_dlq_events_total)") == len(MALFORMED)
                and bool(query(url, "bundlecast_consumer_lag_messages"))
            )

        wait_until(everything_scraped, 120, "Prometheus to scrape every answer, dead letter and lag")

        consumed = {
            r["metric"]["type"]: float(r["value"][1]) for r in query(url, "bundlecast_events_consumed_total")
        }
        assert consumed == {event_type: float(sent_types.get(event_type, 0)) for event_type in consumed}
        assert sum(consumed.values()) == N_VALID
        dead = {
            r["metric"]["reason"]: float(r["value"][1]) for r in query(url, "bundlecast_dlq_events_total")
        }
        assert dead == dict.fromkeys(MALFORMED, 1.0)

        assert scalar(url, "bundlecast_end_to_end_latency_seconds_count") == N_VALID
        mean_latency = scalar(
            url, "bundlecast_end_to_end_latency_seconds_sum / bundlecast_end_to_end_latency_seconds_count"
        )
        assert mean_latency is not None and 0 < mean_latency < 30
        p99 = scalar(
            url,
            "histogram_quantile(0.99, sum by (le) (rate(bundlecast_end_to_end_latency_seconds_bucket[1m])))",
        )
        assert p99 is not None and 0 < p99 <= 5.0  # within the top finite bucket
        assert scalar(url, "sum(rate(bundlecast_events_consumed_total[1m]))") > 0
        assert scalar(url, "bundlecast_batch_size_events_sum") == N_VALID + len(
            MALFORMED
        )  # every message read
        # One answer per user per batch: at least one batch per user, at most one answer per event.
        assert 6 <= scalar(url, "bundlecast_batch_users_sum") <= N_VALID
        stages = {r["metric"]["stage"] for r in query(url, "bundlecast_stage_duration_seconds_count > 0")}
        assert {"state", "model", "faiss", "publish"} <= stages

        (model,) = query(url, "bundlecast_model_info")
        assert model["metric"]["version"] == version_dir.name
        assert scalar(url, "bundlecast_index_items") == len(vocab)
        assert scalar(url, "bundlecast_model_reload_failures_total") == 0

        scraped = set(label_values(url, "__name__"))
        for name, expr in {**dashboard_expressions(), **alert_expressions()}.items():
            missing = metric_names(expr) - scraped
            assert not missing, f"{name}: the worker exported no {sorted(missing)}"
            query(url, expr)  # the real server accepts the expression
