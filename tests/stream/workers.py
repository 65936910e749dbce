"""`bundlecast worker` processes for the end-to-end tests: a real broker (Tansu) and real RocksDB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from stream.broker import EmbeddedBroker


class Worker:
    """A `bundlecast worker` subprocess against a broker, with its own state dir and log file."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        model_dir: Path,
        state_dir: Path,
        log: Path,
        python_path: Path | None = None,
        **settings: str,
    ) -> None:
        env = (
            os.environ
            | {
                "BUNDLECAST_METRICS_PORT": "0",
                "BUNDLECAST_WEB_PORT": "0",  # the query API's tests give each worker a port of its own
                "BUNDLECAST_PARTITIONS": "2",
                "BUNDLECAST_BATCH_LINGER_MS": "20",
                "BUNDLECAST_RELOAD_INTERVAL_S": "0.5",
                "OMP_NUM_THREADS": "1",
            }
            | {f"BUNDLECAST_{name.upper()}": value for name, value in settings.items()}
            | {
                "BUNDLECAST_KAFKA_BOOTSTRAP": broker.bootstrap,
                "BUNDLECAST_MODEL_DIR": str(model_dir),
                "BUNDLECAST_STATE_DIR": str(state_dir),
            }
        )
        if python_path:  # ahead of the caller's own PYTHONPATH, if any
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(python_path), env.get("PYTHONPATH")]))
        self.log = log
        command = [sys.executable, "-m", "stream.cli", "worker", "--log-level", "info"]
        self.process = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
