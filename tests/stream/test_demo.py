"""`bundlecast demo` end to end on the embedded broker: it fails loudly when its worker dies, and moves
the metrics to a free port when the default one is taken."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

FAULT_INJECTION = Path(__file__).parent / "fault_injection"


def demo(model_dir: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "BUNDLECAST_MODEL_DIR": str(model_dir),
        "BUNDLECAST_STATE_DIR": str(tmp_path / "state"),
        "TMPDIR": str(tmp_path),
        "COLUMNS": "200",
        **env,
    }
    environment.pop("BUNDLECAST_KAFKA_BOOTSTRAP", None)
    command = [sys.executable, "-m", "stream.cli", "demo", "--limit", "5", "--rate", "50"]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)


def test_a_demo_whose_worker_dies_fails_with_the_workers_last_words(
    artifact_root: Path, tmp_path: Path
) -> None:
    pythonpath = os.pathsep.join([str(FAULT_INJECTION / "dies"), os.environ.get("PYTHONPATH", "")])
    result = demo(artifact_root, tmp_path, PYTHONPATH=pythonpath, BUNDLECAST_METRICS_PORT="0")
    assert result.returncode == 1
    assert "injected: this worker dies at start" in result.stderr
    kept = re.search(r"exited with status 3; its log is kept at (\S+)", result.stderr)
    assert kept, result.stderr
    assert "injected" in Path(kept.group(1)).read_text()
    assert "recommendations received" not in result.stdout


def test_a_taken_metrics_port_moves_the_demo_to_a_free_one(artifact_root: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = demo(artifact_root, tmp_path, BUNDLECAST_METRICS_PORT=str(port))
    assert result.returncode == 0, result.stdout + result.stderr
    moved = re.search(rf"port {port} is taken: the worker's metrics on port (\d+)", result.stdout)
    assert moved and int(moved.group(1)) != port
    assert "5 recommendations received" in result.stdout and "curl http://localhost:" in result.stdout
    assert not list(tmp_path.glob("bundlecast-demo-worker-*.log"))  # a clean run leaves no log behind
