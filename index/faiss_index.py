"""Maximum-inner-product retrieval over the model's item embeddings, on CPU or GPU behind one API.

The model scores an item by the inner product of the session vector and the item vector, so every
index kind uses the inner-product metric and row i of the embedding matrix is item index i of the
ItemVocab. Mapping string ids to rows is the caller's business.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

IndexKind = Literal["exact", "ivf", "hnsw"]
Device = Literal["cpu", "gpu"]
DeviceRequest = Literal["auto", "cpu", "gpu"]

INDEX_FILE = "items.faiss"
SPEC_FILE = "index.json"
# GPU top-k kernels (flat and IVF) refuse larger k; over-fetching for exclusions must stay below it.
GPU_MAX_K = 2048
# k-means on 40 points per list (faiss's floor) instead of its default 256: on 200k random d=64 items it
# trained 3x faster for ~2 points less recall@10 at nprobe=64, which nprobe buys back at query time.
IVF_TRAIN_POINTS_PER_LIST = 40
# faiss warns (and clusters poorly) below ~39 training points per list, so small catalogues get fewer lists.
IVF_MIN_POINTS_PER_LIST = 39


class FaissSettings(BaseSettings):
    """Runtime knobs, from BUNDLECAST_FAISS_DEVICE / BUNDLECAST_FAISS_THREADS."""

    model_config = SettingsConfigDict(env_prefix="BUNDLECAST_FAISS_")

    device: DeviceRequest = "auto"
    # faiss would take every core; the worker shares them with torch and the stream, and OpenMP threads
    # spin-waiting on busy cores make batch-1 search tens of times slower, so take half of them.
    threads: PositiveInt = max(1, (os.cpu_count() or 1) // 2)


class IndexSpec(BaseModel):
    """What was built, written beside the faiss file so a loaded index is checked and re-tuned alike."""

    kind: IndexKind
    n_items: PositiveInt
    dim: PositiveInt
    nlist: PositiveInt | None = None
    nprobe: PositiveInt = 32
    hnsw_m: PositiveInt = 32
    ef_construction: PositiveInt = 40
    ef_search: PositiveInt = 64


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_device(kind: IndexKind, requested: DeviceRequest | None = None) -> Device:
    """Device an index of `kind` runs on: the argument, else BUNDLECAST_FAISS_DEVICE, else auto.

    HNSW has no faiss GPU implementation, so it always runs on CPU; asking for a GPU that is not
    there is an error whatever the kind, so a misconfigured deployment fails loudly.
    """
    try:
        choice = requested or FaissSettings().device
    except ValidationError as error:
        raise ValueError(f"BUNDLECAST_FAISS_DEVICE must be one of auto|cpu|gpu: {error}") from error
    if choice not in ("auto", "cpu", "gpu"):
        raise ValueError(f"device must be one of auto|cpu|gpu, got {choice!r}")
    if choice == "gpu" and not gpu_available():
        raise RuntimeError(
            "a GPU faiss index was requested but faiss has no GPU support or sees no GPU "
            "(install faiss-gpu, or set BUNDLECAST_FAISS_DEVICE=cpu)"
        )
    if kind == "hnsw" or choice == "cpu":
        return "cpu"
    return "gpu" if gpu_available() else "cpu"


def configure_threads() -> int:
    """Apply BUNDLECAST_FAISS_THREADS to faiss's OpenMP pool; returns the count used."""
    threads = FaissSettings().threads
    faiss.omp_set_num_threads(threads)
    return threads


def default_nlist(n_items: int) -> int:
    """~4*sqrt(n) inverted lists, fewer when there are too few items to train that many."""
    return max(1, min(round(4 * math.sqrt(n_items)), n_items // IVF_MIN_POINTS_PER_LIST))


def _as_matrix(array: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    matrix = np.ascontiguousarray(array, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array, got shape {matrix.shape}")
    if dim is not None and matrix.shape[1] != dim:
        raise ValueError(f"{name} have dimension {matrix.shape[1]}, the index has {dim}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return matrix


class ItemIndex:
    """Top-k items by inner product for a batch of session vectors, with per-query exclusions.

    Build with `ItemIndex.build`, restore with `ItemIndex.load`; both place the index on the device
    chosen by `resolve_device`, exposed as `.device`.
    """

    def __init__(self, cpu_index: faiss.Index, spec: IndexSpec, device: DeviceRequest | None = None) -> None:
        if cpu_index.ntotal != spec.n_items or cpu_index.d != spec.dim:
            raise ValueError(
                f"faiss index holds {cpu_index.ntotal} x {cpu_index.d} vectors, "
                f"its spec says {spec.n_items} x {spec.dim}"
            )
        configure_threads()
        self.spec = spec
        self.device: Device = resolve_device(spec.kind, device)
        self._gpu_resources = faiss.StandardGpuResources() if self.device == "gpu" else None
        self._index = (
            faiss.index_cpu_to_gpu(self._gpu_resources, 0, cpu_index) if self.device == "gpu" else cpu_index
        )
        self.tune(nprobe=spec.nprobe, ef_search=spec.ef_search)

    @classmethod
    def build(
        cls,
        item_vectors: np.ndarray,
        kind: IndexKind = "exact",
        *,
        nlist: int | None = None,
        nprobe: int = 32,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        device: DeviceRequest | None = None,
    ) -> ItemIndex:
        """Index `item_vectors` (n_items, d); trained and filled on CPU, then moved to the device."""
        items = _as_matrix(item_vectors, "item vectors")
        n_items, dim = items.shape
        if kind == "ivf":
            nlist = nlist or default_nlist(n_items)
            if nlist > n_items:
                raise ValueError(f"nlist={nlist} exceeds the {n_items} items to cluster")
        spec = IndexSpec(
            kind=kind,
            n_items=n_items,
            dim=dim,
            nlist=nlist if kind == "ivf" else None,
            nprobe=nprobe,
            hnsw_m=hnsw_m,
            ef_construction=ef_construction,
            ef_search=ef_search,
        )
        factory = {"exact": "Flat", "ivf": f"IVF{spec.nlist},Flat", "hnsw": f"HNSW{spec.hnsw_m}"}[kind]
        configure_threads()
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivf":
            index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
            index.train(items)
        if kind == "hnsw":
            index.hnsw.efConstruction = spec.ef_construction
        index.add(items)
        return cls(index, spec, device)

    @classmethod
    def load(cls, directory: Path | str, device: DeviceRequest | None = None) -> ItemIndex:
        directory = Path(directory)
        spec_path, index_path = directory / SPEC_FILE, directory / INDEX_FILE
        if not spec_path.is_file() or not index_path.is_file():
            raise FileNotFoundError(f"{directory} holds no saved index ({SPEC_FILE} and {INDEX_FILE})")
        spec = IndexSpec.model_validate_json(spec_path.read_text())
        return cls(faiss.read_index(str(index_path)), spec, device)

    def save(self, directory: Path | str) -> None:
        """Write a CPU copy (GPU indexes cannot be serialised) and the spec as JSON."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self._cpu_index(), str(directory / INDEX_FILE))
        (directory / SPEC_FILE).write_text(json.dumps(self.spec.model_dump(), indent=2) + "\n")

    def to(self, device: DeviceRequest) -> ItemIndex:
        """An independent copy of this index on `device` (no retraining)."""
        cpu_index = self._cpu_index()
        if cpu_index is self._index:
            cpu_index = faiss.clone_index(cpu_index)
        return ItemIndex(cpu_index, self.spec, device)

    def tune(self, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade recall for speed at query time: lists probed (IVF), beam width (HNSW)."""
        updates = {"nprobe": nprobe, "ef_search": ef_search}
        self.spec = IndexSpec.model_validate(
            self.spec.model_dump() | {name: value for name, value in updates.items() if value is not None}
        )
        if self.spec.kind == "ivf":
            self._index.nprobe = self.spec.nprobe
        if self.spec.kind == "hnsw":
            self._index.hnsw.efSearch = self.spec.ef_search

    def __len__(self) -> int:
        return self.spec.n_items

    def search(
        self, queries: np.ndarray, k: int, exclude: Sequence[Collection[int]] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores (B, k) float32, ids (B, k) int64), best first, skipping each query's `exclude`.

        Over-fetches k + the largest exclusion set and filters, so every row holds k valid ids
        whenever the catalogue (or, for approximate kinds, the probed part of it) has them; missing
        slots are id -1 with score -inf.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = _as_matrix(queries, "queries", self.spec.dim)
        if exclude is not None and len(exclude) != len(queries):
            raise ValueError(f"exclude has {len(exclude)} entries for {len(queries)} queries")
        largest_exclusion = max(map(len, exclude), default=0) if exclude is not None else 0
        fetch = min(k + largest_exclusion, self.spec.n_items)
        if self.device == "gpu" and fetch > GPU_MAX_K:
            raise ValueError(
                f"k + largest exclusion = {fetch} exceeds the GPU top-k limit {GPU_MAX_K}; "
                "use a CPU index for such long exclusion lists"
            )
        scores, ids = self._index.search(queries, fetch)
        keep = ids >= 0
        if exclude is not None:
            for row, excluded in enumerate(exclude):
                if excluded:
                    keep[row] &= ~np.isin(ids[row], np.fromiter(excluded, dtype=np.int64))
        # A stable sort on "dropped" moves kept hits to the front without disturbing their rank order.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        width = order.shape[1]
        kept = np.take_along_axis(keep, order, axis=1)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids[:, :width] = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
        out_scores[:, :width] = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        return out_scores, out_ids

    def _cpu_index(self) -> faiss.Index:
        return faiss.index_gpu_to_cpu(self._index) if self.device == "gpu" else self._index


def recall_at_k(approx: ItemIndex, exact: ItemIndex, queries: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the approximate index also returns in its top-k."""
    return overlap_at_k(approx.search(queries, k)[1], exact.search(queries, k)[1])


def overlap_at_k(found_ids: np.ndarray, true_ids: np.ndarray) -> float:
    """Mean per-row fraction of the valid (>= 0) true ids present among the found ids."""
    if found_ids.shape[0] != true_ids.shape[0]:
        raise ValueError(f"{found_ids.shape[0]} result rows for {true_ids.shape[0]} ground-truth rows")
    hits = [
        len(np.intersect1d(found[found >= 0], truth[truth >= 0])) / max(1, int((truth >= 0).sum()))
        for found, truth in zip(found_ids, true_ids, strict=True)
    ]
    return float(np.mean(hits))
