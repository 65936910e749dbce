"""The model currently answering, and its hot reload.

A new artifact version (LATEST moved under `BUNDLECAST_MODEL_DIR`, or SIGHUP) is loaded off the event
loop and then swapped in with one reference assignment. The worker reads `current` once per batch, so
a batch is answered entirely by one version and no event is dropped or answered twice by the swap.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from model import Recommender
from model.artifacts import resolve_version
from stream import metrics

log = logging.getLogger(__name__)


def load_warm(path: Path) -> Recommender:
    """Load a version and build its lazy parts (item names, bundle caches, first forward) right away, so
    that the first batches it answers, possibly right after a hot swap, do not pay for them."""
    recommender = Recommender.load(path)
    recommender.warm_up()
    return recommender


def settle_heap() -> None:
    """Take everything alive now out of the cyclic garbage collector's sight (`gc.freeze`).

    A loaded model is millions of long-lived objects (catalogue, vocabularies, complement structures),
    and every full collection walked them all: 142-190 ms with the demo model, three times in a 30 s bench
    run, stalling every event in flight (the worker's p99 at 2,000 events/s and more was 227-359 ms with
    them, 82-131 ms without). Frozen objects are still freed by reference counting; the full collection
    before freezing reclaims the previous model's cycles, one such pause per load instead of one every
    few seconds.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelHolder:
    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.current = load_warm(model_dir)
        settle_heap()
        metrics.set_model_version(self.current.version, len(self.current.vocab))
        self._lock = asyncio.Lock()
        self._failed: object = None  # the last failure: a version as it was on disk, or an error's text

    def pending_version(self) -> Path | None:
        """The version directory that should answer, when it differs from the current one."""
        target = resolve_version(self.model_dir)
        return None if target.resolve() == self.current.version_dir.resolve() else target

    async def reload_if_changed(self) -> bool:
        """Load and swap in a newer version if there is one; on failure keep the current model.

        A failure is logged once: a version that failed to load is not loaded again until it changes on
        disk or another one is published, and a LATEST that cannot be resolved (it names a missing version)
        is not logged again while it fails the same way. Each poll that finds the failure still counts,
        so the reload-failure alert keeps firing while the published version cannot be served."""
        async with self._lock:
            attempt: object = None
            try:
                target = self.pending_version()
                if target is None:
                    self._failed = None
                    return False
                attempt = (target, max(entry.stat().st_mtime for entry in target.iterdir()))
                if attempt == self._failed:
                    metrics.MODEL_RELOAD_FAILURES.inc()
                    return False
                loaded = await asyncio.to_thread(load_warm, target)
            except Exception as error:
                failure = attempt if attempt is not None else f"{type(error).__name__}: {error}"
                metrics.MODEL_RELOAD_FAILURES.inc()
                if failure != self._failed:
                    log.exception(
                        "model reload from %s failed; version %s keeps answering",
                        self.model_dir,
                        self.current.version,
                    )
                self._failed = failure
                return False
            previous, self.current = self.current.version, loaded
            self._failed = None
            settle_heap()
            metrics.MODEL_RELOADS.inc()
            metrics.set_model_version(loaded.version, len(loaded.vocab))
            log.warning("model reloaded: %s -> %s", previous, loaded.version)
            return True
