"""Every query on the dashboard and in the alert rules selects metrics that the worker really exports."""

from __future__ import annotations

import json

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.expressions import (
    DASHBOARD,
    DEPLOY_DIR,
    alert_expressions,
    dashboard_expressions,
    metric_names,
)

# Series that Prometheus itself attaches to every scrape target.
SCRAPE_SERIES = {"up"}

OPERATOR_PANELS = {
    "Throughput": "bundlecast_events_consumed_total",
    "End-to-end latency percentiles": "bundlecast_end_to_end_latency_seconds_bucket",
    "Consumer lag by partition": "bundlecast_consumer_lag_messages",
    "Dead-letter rate by reason": "bundlecast_dlq_events_total",
    "Stage time p99 per batch": "bundlecast_stage_duration_seconds_bucket",
    "Cold-start share": "bundlecast_cold_start_answers_total",
    "Model version": "bundlecast_model_info",
    "Index size": "bundlecast_index_items",
}

EXPRESSIONS = {f"dashboard: {key}": expr for key, expr in dashboard_expressions().items()} | {
    f"alert: {key}": expr for key, expr in alert_expressions().items()
}


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
def test_expression_selects_only_exported_metrics(name: str, exported_sample_names: set[str]) -> None:
    selected = metric_names(EXPRESSIONS[name])
    assert selected, f"{name} selects no metric"
    unknown = selected - exported_sample_names - SCRAPE_SERIES
    assert not unknown, f"{name} selects metrics the worker does not export: {sorted(unknown)}"


def test_metric_names_rejects_invalid_promql() -> None:
    with pytest.raises(ValueError):
        metric_names("sum(rate(bundlecast_events_consumed_total[5m])")


def test_dashboard_has_the_operator_panels() -> None:
    panels = {panel["title"]: panel for panel in json.loads(DASHBOARD.read_text())["panels"]}
    for title, metric in OPERATOR_PANELS.items():
        assert title in panels, f"dashboard lacks the {title!r} panel"
        selected = set().union(*(metric_names(expr) for key, expr in dashboard_expressions().items()
                                 if key.startswith(f"{title}/")))  # fmt: skip
        assert metric in selected, f"panel {title!r} does not query {metric}"


def test_every_worker_metric_is_on_the_dashboard(worker_exposition: str) -> None:
    """An exported metric that no panel shows is either dead code or a missing panel."""
    on_dashboard = set().union(*(metric_names(expr) for expr in dashboard_expressions().values()))
    unseen = [
        family.name
        for family in text_string_to_metric_families(worker_exposition)
        if family.name.startswith("bundlecast_")
        and not {sample.name for sample in family.samples} & on_dashboard
    ]
    assert not unseen, f"worker metrics on no dashboard panel: {unseen}"


def datasource_references(node: object) -> list[dict]:
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [ref for value in node.values() for ref in datasource_references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in datasource_references(value)]
    return []


def test_the_dashboard_names_no_datasource_so_any_grafana_can_import_it() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    references = datasource_references(dashboard)
    assert len(references) > len(dashboard["panels"])  # panels and their targets
    assert {(ref["type"], ref["uid"]) for ref in references} == {("prometheus", f"${{{variable['name']}}}")}


def test_grafana_provisioning_points_at_the_dashboard_and_datasource() -> None:
    provisioning = DEPLOY_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    providers = yaml.safe_load((provisioning / "dashboards" / "bundlecast.yml").read_text())["providers"]
    assert datasources[0]["type"] == "prometheus" and datasources[0]["isDefault"]  # what the variable picks
    compose = yaml.safe_load((DEPLOY_DIR / "docker-compose.yml").read_text())
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in compose["services"]["grafana"]["volumes"][:2])
    assert mounts["./grafana/dashboards"] == providers[0]["options"]["path"]
