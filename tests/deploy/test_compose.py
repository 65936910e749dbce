"""The docker-compose stack: Compose-spec schema, and wiring that only works if names and paths agree.

Docker cannot run here, so `docker compose up` is not exercised; what can be checked statically is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream.config import StreamSettings
from tests.deploy.conftest import DEPLOY_DIR

COMPOSE_FILE = DEPLOY_DIR / "docker-compose.yml"
_DEFAULTED_VARIABLE = re.compile(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}")
WORKER_ENV = {
    "BUNDLECAST_KAFKA_BOOTSTRAP",
    "BUNDLECAST_MODEL_DIR",
    "BUNDLECAST_STATE_DIR",
    "BUNDLECAST_METRICS_PORT",
}


SETTINGS_ENV = {f"BUNDLECAST_{name.upper()}" for name in StreamSettings.model_fields}


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the dev extra), else on PATH."""
    local = Path(sys.executable).with_name(name)
    path = str(local) if local.exists() else shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` is not installed (pip install -e '.[cpu,dev]')")
    return path


def compose_with_defaults() -> dict:
    """The compose file as `docker compose` sees it with no variables set: every ${X:-default} expanded."""
    text = COMPOSE_FILE.read_text()
    assert not re.search(r"\$\{\w+\}", text), "every variable needs a default so the stack starts as is"
    return yaml.safe_load(_DEFAULTED_VARIABLE.sub(lambda match: match["default"], text))


@pytest.mark.parametrize("expand_defaults", [False, True], ids=["as-written", "defaults-expanded"])
def test_compose_file_matches_the_compose_spec(expand_defaults: bool, tmp_path: Path) -> None:
    target = COMPOSE_FILE
    if expand_defaults:
        target = tmp_path / "docker-compose.yml"
        target.write_text(yaml.safe_dump(compose_with_defaults()))
    result = subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_services_are_wired_together() -> None:
    services = compose_with_defaults()["services"]
    assert {"kafka", "worker", "prometheus", "grafana"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    worker = services["worker"]
    assert set(worker["environment"]) >= WORKER_ENV
    assert set(worker["environment"]) <= SETTINGS_ENV, "the worker ignores env vars it has no setting for"
    assert worker["environment"]["BUNDLECAST_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert int(worker["deploy"]["replicas"]) >= 2
    mounts = {volume.split(":")[1] if ":" in volume else volume for volume in worker["volumes"]}
    assert {
        worker["environment"]["BUNDLECAST_MODEL_DIR"],
        worker["environment"]["BUNDLECAST_STATE_DIR"],
    } <= mounts


def test_prometheus_scrapes_the_port_the_workers_serve() -> None:
    worker = compose_with_defaults()["services"]["worker"]
    scrape = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    (job,) = [job for job in scrape if job["job_name"] == "bundlecast-worker"]
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["worker"]
    assert str(discovery["port"]) == worker["environment"]["BUNDLECAST_METRICS_PORT"]


def test_every_host_path_the_stack_mounts_or_builds_exists() -> None:
    services = compose_with_defaults()["services"]
    build = services["worker"]["build"]
    assert (DEPLOY_DIR / build["context"] / build["dockerfile"]).is_file()
    bind_sources = [
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    ]
    assert bind_sources
    for source in bind_sources:
        assert (DEPLOY_DIR / source).exists(), f"compose mounts missing {source}"


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [venv_tool("hadolint"), str(DEPLOY_DIR / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_worker_healthcheck_asks_its_liveness_endpoint() -> None:
    worker = compose_with_defaults()["services"]["worker"]
    probe = " ".join(worker["healthcheck"]["test"])
    assert f"localhost:{worker['environment']['BUNDLECAST_METRICS_PORT']}/healthz" in probe


def test_prometheus_sends_alerts_to_the_stacks_alertmanager() -> None:
    services = compose_with_defaults()["services"]
    alerting = yaml.safe_load((DEPLOY_DIR / "prometheus" / "prometheus.yml").read_text())["alerting"]
    (target,) = [
        t for manager in alerting["alertmanagers"] for c in manager["static_configs"] for t in c["targets"]
    ]
    host, port = target.split(":")
    assert host in services and f"{port}:{port}" in services[host]["ports"]
    assert "alertmanager" in services["prometheus"]["depends_on"]


def test_alertmanager_routes_every_severity_the_rules_use_to_a_receiver() -> None:
    config = yaml.safe_load((DEPLOY_DIR / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {receiver["name"] for receiver in config["receivers"]}
    routes = [config["route"], *config["route"].get("routes", [])]
    assert {route["receiver"] for route in routes} <= receivers
    rules = yaml.safe_load((DEPLOY_DIR / "prometheus" / "alerts.yml").read_text())["groups"]
    severities = {rule["labels"]["severity"] for group in rules for rule in group["rules"]}
    matched = {
        matcher.split("=")[1].strip('"')
        for route in routes
        for matcher in route.get("matchers", [])
        if matcher.startswith("severity=")
    }
    inhibited = {
        matcher.split("=")[1].strip('"')
        for rule in config.get("inhibit_rules", [])
        for matcher in rule["target_matchers"]
    }
    assert matched | inhibited <= severities
    alerts = {rule["alert"] for group in rules for rule in group["rules"]}
    sources = {m.split("=")[1].strip('"') for r in config["inhibit_rules"] for m in r["source_matchers"]}
    assert sources <= alerts
