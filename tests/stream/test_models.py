"""The model holder: warm loading and hot reload, without Kafka."""

from __future__ import annotations

import asyncio
import gc
import os
import shutil
import time
import weakref
from pathlib import Path

import pytest

from model.artifacts import resolve_version
from model.bundles import _CONTEXTS
from stream import metrics
from stream.models import ModelHolder
from tests.conftest import PublishCopy


def test_a_loaded_model_is_warm_and_a_new_version_is_swapped_in_warm(
    model_dir: Path, publish_copy: PublishCopy
) -> None:
    holder = ModelHolder(model_dir)
    assert holder.current.complements is not None
    assert holder.current in _CONTEXTS and "names" in vars(holder.current)  # built before the first batch
    assert not asyncio.run(holder.reload_if_changed())  # nothing new: the same object keeps answering
    old = holder.current
    new = "99990101T000000Z-warm"
    publish_copy(model_dir, old.version, new)
    assert asyncio.run(holder.reload_if_changed())
    assert holder.current.version == new == resolve_version(model_dir).name
    assert holder.current in _CONTEXTS and "names" in vars(holder.current)


def test_the_answering_model_is_frozen_out_of_full_collections_and_a_replaced_one_is_reclaimed(
    model_dir: Path, publish_copy: PublishCopy
) -> None:
    gc.unfreeze()
    try:
        holder = ModelHolder(model_dir)
        frozen_at_load = gc.get_freeze_count()
        assert frozen_at_load > 0
        old = weakref.ref(holder.current)
        publish_copy(model_dir, holder.current.version, "99990101T000000Z-gc")
        assert asyncio.run(holder.reload_if_changed())
        assert old() is None  # nothing of the replaced version stays frozen
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_a_version_that_fails_to_load_is_not_served_nor_retried_until_it_changes(
    model_dir: Path, publish_copy: PublishCopy, caplog: pytest.LogCaptureFixture
) -> None:
    holder = ModelHolder(model_dir)
    good = holder.current
    publish_copy(model_dir, good.version, "99990101T000000Z-broken")
    weights = resolve_version(model_dir) / "weights.pt"
    weights.write_bytes(b"not a checkpoint")
    failures = metrics.MODEL_RELOAD_FAILURES._value.get()

    assert not asyncio.run(holder.reload_if_changed())
    assert not asyncio.run(holder.reload_if_changed())  # the same broken version: not loaded again
    assert holder.current is good
    assert [r.message for r in caplog.records if "reload" in r.message] == [
        f"model reload from {model_dir} failed; version {good.version} keeps answering"
    ]
    assert metrics.MODEL_RELOAD_FAILURES._value.get() == failures + 2  # still failing: the alert holds

    shutil.copyfile(good.version_dir / "weights.pt", weights)  # repaired in place
    os.utime(weights, (time.time() + 1, time.time() + 1))  # (a later mtime even on a coarse clock)
    assert asyncio.run(holder.reload_if_changed())
    assert holder.current.version == "99990101T000000Z-broken"


def test_a_latest_that_names_a_missing_version_is_logged_once_and_counted_every_poll(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = ModelHolder(model_dir)
    (model_dir / "LATEST").write_text("99990101T000000Z-missing\n")
    failures = metrics.MODEL_RELOAD_FAILURES._value.get()

    for _ in range(3):
        assert not asyncio.run(holder.reload_if_changed())

    assert len([r for r in caplog.records if "reload" in r.message]) == 1
    assert metrics.MODEL_RELOAD_FAILURES._value.get() == failures + 3
