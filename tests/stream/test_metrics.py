"""The worker's metrics: Prometheus naming conventions, bounded labels, and a real /metrics endpoint."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from model.contract import EVENT_TYPES
from stream import metrics

# Label names whose values come from a closed set (status: HTTP codes); never a user or item id.
BOUNDED_LABELS = {"type", "reason", "stage", "topic", "partition", "version", "route", "status"}
UNIT_SUFFIXES = ("_seconds", "_items", "_events", "_users", "_messages", "_entries")


def bundlecast_families() -> list:
    return [family for family in REGISTRY.collect() if family.name.startswith("bundlecast_")]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_names_follow_prometheus_conventions() -> None:
    families = bundlecast_families()
    assert len(families) >= 15
    for family in families:
        if family.type == "counter":
            assert {s.name for s in family.samples} <= {f"{family.name}_total"}, family.name
        elif family.type in ("histogram", "gauge"):
            assert family.name.endswith(UNIT_SUFFIXES), f"{family.name} has no base-unit suffix"
            assert not family.name.endswith("_total"), family.name
        else:
            assert family.type == "info", f"{family.name}: unexpected type {family.type}"
        assert "_ms" not in family.name and "milli" not in family.name, f"{family.name} is not in base units"


def test_labels_are_bounded() -> None:
    for family in bundlecast_families():
        for s in family.samples:
            assert set(s.labels) - {"le"} <= BOUNDED_LABELS, f"{s.name} has unbounded labels {s.labels}"


def test_known_label_values_exist_at_zero_before_any_event() -> None:
    for event_type in EVENT_TYPES:
        assert REGISTRY.get_sample_value("bundlecast_events_consumed_total", {"type": event_type}) is not None
    for stage in metrics.STAGES:
        assert (
            REGISTRY.get_sample_value("bundlecast_stage_duration_seconds_count", {"stage": stage}) is not None
        )


def test_observe_stage_times_the_named_stage_only() -> None:
    before = {
        stage: sample("bundlecast_stage_duration_seconds_count", stage=stage) for stage in metrics.STAGES
    }
    with metrics.observe_stage("faiss"):
        pass
    after = {
        stage: sample("bundlecast_stage_duration_seconds_count", stage=stage) for stage in metrics.STAGES
    }
    assert {stage for stage in metrics.STAGES if after[stage] != before[stage]} == {"faiss"}
    assert after["faiss"] == before["faiss"] + 1


def test_observe_stage_rejects_an_unknown_stage() -> None:
    with pytest.raises(ValueError, match="unknown stage"):
        metrics.observe_stage("user-42")  # type: ignore[arg-type]


def test_model_version_keeps_one_series() -> None:
    metrics.set_model_version("v1", 100)
    metrics.set_model_version("v2", 120)
    versions = [s.labels["version"] for s in metrics.MODEL.collect()[0].samples]
    assert versions == ["v2"]
    assert sample("bundlecast_index_items") == 120


def test_revoked_partitions_lose_their_lag_series() -> None:
    for partition in ("0", "1"):
        metrics.CONSUMER_LAG.labels(topic="clickstream", partition=partition).set(7)
    metrics.forget_partitions("clickstream", [1, 5])  # 5 was never reported: ignored
    lag = "bundlecast_consumer_lag_messages"
    assert REGISTRY.get_sample_value(lag, {"topic": "clickstream", "partition": "0"}) == 7
    assert REGISTRY.get_sample_value(lag, {"topic": "clickstream", "partition": "1"}) is None


def test_metrics_server_serves_the_exposition_over_http() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    metrics.start_metrics_server(port, addr="127.0.0.1")
    metrics.RECOMMENDATIONS_PUBLISHED.inc(3)
    expected = sample("bundlecast_recommendations_published_total")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    served = {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }
    assert served["bundlecast_recommendations_published_total"] == expected >= 3
