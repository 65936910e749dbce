"""Prometheus configs and alert rules pass promtool, and the alerts fire on the cases they are written for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY_DIR

PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"


def promtool_run(promtool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-k8s.yml"])
def test_scrape_config_passes_promtool(promtool: str, config: str) -> None:
    result = promtool_run(promtool, "check", "config", PROMETHEUS_DIR / config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_pass_promtool(promtool: str) -> None:
    result = promtool_run(promtool, "check", "rules", PROMETHEUS_DIR / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_fire_as_their_unit_tests_expect(promtool: str) -> None:
    result = promtool_run(promtool, "test", "rules", PROMETHEUS_DIR / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """Guards the three tests above against a promtool that accepts anything."""
    broken = tmp_path / "alerts.yml"
    broken.write_text(
        (PROMETHEUS_DIR / "alerts.yml").read_text().replace("> 0.05", "> > 0.05", 1), encoding="utf-8"
    )
    assert promtool_run(promtool, "check", "rules", broken).returncode != 0
