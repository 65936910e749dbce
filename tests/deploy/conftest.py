"""Fixtures for the deployment tests: Prometheus tools and the metric names the worker exports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"

# Gives every labelled metric one child so that its series appear in the exposition, like a worker that
# has seen a malformed event, been assigned a partition and loaded a model. Run in a subprocess so the
# test process's default registry keeps only real label values.
_EXPOSE_ALL_SERIES = """
from prometheus_client import generate_latest
from stream import metrics
metrics.DLQ_EVENTS.labels(reason="not_json").inc()
metrics.CONSUMER_LAG.labels(topic="clickstream", partition="0").set(0)
metrics.set_model_version("example", 1)
metrics.QUERY_REQUESTS.labels(route="user", status="400").inc()
print(generate_latest().decode())
"""


def require_binary(name: str) -> str:
    """Path of a Prometheus tool; skipped locally when it is missing, but CI (`.ci/run`) installs it."""
    path = shutil.which(name)
    if path is None:
        reason = f"`{name}` not found: install Debian's `prometheus` package (as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must provide it")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_binary("promtool")


@pytest.fixture(scope="session")
def worker_exposition() -> str:
    """The `/metrics` text of `stream.metrics` with a series for every metric."""
    return subprocess.run(
        [sys.executable, "-c", _EXPOSE_ALL_SERIES], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="session")
def exported_sample_names(worker_exposition: str) -> set[str]:
    return sample_names(worker_exposition)


def sample_names(exposition: str) -> set[str]:
    """Sample names (`x_total`, `x_bucket`, ...) in Prometheus text exposition format."""
    return {sample.name for family in text_string_to_metric_families(exposition) for sample in family.samples}
