"""A real Prometheus server for tests: generated config, temporary storage, a loopback port, the HTTP API."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

SCRAPE_JOB = "bundlecast-worker"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_prometheus(binary: str, targets: list[str], workdir: Path) -> Iterator[str]:
    """Start Prometheus scraping `targets` every second; yield its base URL, stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [{"job_name": SCRAPE_JOB, "static_configs": [{"targets": targets}]}],
            }
        )
    )
    address = f"127.0.0.1:{free_port()}"
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={address}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://{address}"
    try:
        wait_until(lambda: _http_ok(f"{url}/-/ready"), timeout_s=30, what="Prometheus to become ready")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, promql: str) -> list[dict]:
    """Instant query through the HTTP API; the `result` vector (empty when nothing matches)."""
    return _api(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")["result"]


def label_values(url: str, label: str) -> list[str]:
    """Every value of a label across stored series; `__name__` gives the scraped metric names."""
    return _api(f"{url}/api/v1/label/{label}/values")


def _api(address: str) -> Any:
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:  # 400 for a query the server cannot parse
        raise AssertionError(f"{address}: {error.read().decode()}") from error
    assert body["status"] == "success", body
    return body["data"]


def scalar(url: str, promql: str) -> float | None:
    """The value of a single-series query, or None while it has no series."""
    result = query(url, promql)
    assert len(result) <= 1, f"{promql} returned {len(result)} series"
    return float(result[0]["value"][1]) if result else None


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError):
        return False
