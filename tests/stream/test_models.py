"""The model holder: warm loading and hot reload, without Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path

from model.artifacts import resolve_version
from model.bundles import _CONTEXTS
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
