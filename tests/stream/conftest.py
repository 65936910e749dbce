"""Fixtures of the stream tests: worker processes, killed when their test ends."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.broker import EmbeddedBroker
from tests.stream.workers import Worker


@pytest.fixture
def workers(kafka_broker: EmbeddedBroker, tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop(signal.SIGKILL)
