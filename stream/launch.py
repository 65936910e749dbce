"""Starting the pieces of a local run: a broker when none is configured, a small model, a worker process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from model.artifacts import LATEST
from model.data import SAMPLES_DIR
from stream.broker import embedded_broker
from stream.config import StreamSettings

ONLINE_RETAIL_SAMPLE = SAMPLES_DIR / "online_retail_sample.csv.gz"


@contextmanager
def broker_for(settings: StreamSettings) -> Iterator[StreamSettings]:
    """The settings unchanged when a broker is configured; otherwise pointing at an embedded Tansu."""
    if settings.kafka_bootstrap is not None:
        yield settings
        return
    with embedded_broker() as broker:
        yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})


def has_model(model_dir: Path) -> bool:
    return (model_dir / LATEST).is_file() or (model_dir / "config.json").is_file()


def ensure_shipped_model(model_dir: Path) -> None:
    """Reuse the artifact under `model_dir`, or train the one `bundlecast train --dataset online-retail`
    ships (its default settings, the full data under ../shared): what the bench measures, since nobody
    deploys the demo's small model."""
    if has_model(model_dir):
        return
    from model.data import load_dataset
    from model.sasrec.train import train_artifact

    train_artifact(
        load_dataset("online-retail"),
        model_dir,
        refit_on=load_dataset("online-retail", holdout_validation=False),
    )


def describe_model(model_dir: Path) -> str:
    """One line saying which model an artifact holds (what a speed figure depends on)."""
    from model.artifacts import CONFIG, resolve_version

    version = resolve_version(model_dir)
    config = json.loads((version / CONFIG).read_text())
    model = config["model"]
    shape = f"dim {model['dim']}, {model['n_layers']} blocks, {model['max_len']} positions"
    return (
        f"model {version.name} ({config.get('dataset', '?')}): {shape}, {config.get('members', 1)} member(s)"
    )


def ensure_model(model_dir: Path, epochs: int = 3) -> None:
    """Reuse the artifact under `model_dir`, or train a small one on the online-retail sample shipped here
    (the demo's quick start: not the model `bundlecast train` ships)."""
    if has_model(model_dir):
        return
    from model.data import load_online_retail
    from model.sasrec.model import SASRecConfig
    from model.sasrec.train import TrainConfig, train_artifact

    train_artifact(
        load_online_retail(ONLINE_RETAIL_SAMPLE),
        model_dir,
        SASRecConfig(n_items=0, max_len=20, dim=32, n_layers=1, n_heads=2, dropout=0.1),
        # One member: the demo model is small and served at stream rates, where an ensemble doubles the
        # model and index work per event.
        TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, negatives=512, patience=3, members=1),
    )


def _environment(settings: StreamSettings) -> dict[str, str]:
    """The settings as BUNDLECAST_* env vars for a child process (secrets included, never logged)."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None:
            secret = getattr(value, "get_secret_value", None)
            env[f"BUNDLECAST_{name.upper()}"] = str(secret() if secret else value)
    return env


@contextmanager
def worker_process(settings: StreamSettings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`bundlecast worker` in a child process, stopped with SIGTERM (a clean Faust shutdown) on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker"],
            env=_environment(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the worker in order
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
