"""Versioned model artifacts: each training run writes a new version and marks it latest only when complete.

Layout under an artifact root:
    <root>/versions/<version>/  config.json (model config, member count), vocab.json, item_embeddings.npy,
                                weights.pt, popularity.npy, metrics.json, catalog.parquet (when known),
                                index/ (FAISS),
                                complement/ (when the data has baskets)
    <root>/LATEST               the name of the newest complete version

A reader (the stream's hot reload, `Recommender.load`) therefore never sees a half-written version: the
version directory is built under a temporary name, renamed into place, and only then is LATEST replaced
atomically.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LATEST = "LATEST"
VERSIONS = "versions"
CONFIG = "config.json"


@contextmanager
def new_version(root: Path) -> Iterator[Path]:
    """Yield a scratch directory to write a version into; publish it as latest if the block succeeds."""
    version = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)
    versions = root / VERSIONS
    scratch = versions / f".incomplete-{version}"
    scratch.mkdir(parents=True)
    yield scratch
    scratch.rename(versions / version)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(version + "\n")
    os.replace(pointer, root / LATEST)


def resolve_version(path: Path) -> Path:
    """The version directory behind an artifact root (via LATEST) or a version directory itself."""
    if (path / CONFIG).is_file():
        return path
    if (path / LATEST).is_file():
        version_dir = path / VERSIONS / (path / LATEST).read_text().strip()
        if (version_dir / CONFIG).is_file():
            return version_dir
        raise FileNotFoundError(f"{path / LATEST} points to {version_dir}, which is not a complete version")
    raise FileNotFoundError(
        f"{path} holds no trained model (no {LATEST}, not a version directory); "
        f"train one with `bundlecast train --dataset online-retail --out {path}`"
    )
