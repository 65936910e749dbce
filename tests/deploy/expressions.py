"""The PromQL expressions that operators see: every dashboard query and every alert rule."""

from __future__ import annotations

import json
import re
from pathlib import Path

import promql_parser
import yaml

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY_DIR / "grafana" / "dashboards" / "bundlecast.json"
ALERTS = DEPLOY_DIR / "prometheus" / "alerts.yml"

# Grafana expands these before sending a query; substitute what it would send so PromQL can parse it.
_GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".+"}
_LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+),\s*\w+\)$")


def dashboard_expressions() -> dict[str, str]:
    """Query expressions keyed by `panel title/refId` (and the template variables' label_values selectors)."""
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = {
        f"{panel['title']}/{target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "datasource":  # picks a datasource, queries nothing
            continue
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, f"template variable {variable['name']} is not a label_values() query"
        expressions[f"variable {variable['name']}"] = match["expr"]
    return {key: _expand_grafana_variables(expr) for key, expr in expressions.items()}


def alert_expressions() -> dict[str, str]:
    """Alert rule expressions keyed by alert name."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def metric_names(expr: str) -> set[str]:
    """Names of the metrics an expression selects; raises ValueError if it is not valid PromQL."""
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if not node.name:
                raise ValueError(f"selector without a metric name in {expr!r}")
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _expand_grafana_variables(expr: str) -> str:
    for variable, value in sorted(_GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    if "$" in expr:
        raise ValueError(f"unknown Grafana variable in {expr!r}")
    return expr
