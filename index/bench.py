"""Throughput and recall of the index kinds on synthetic catalogues (a benchmark, not a test).

Items and queries are normalised Gaussian vectors: structureless, hence the hard case for
approximate search, so recall here is a floor for real (clustered) item embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from index.faiss_index import DeviceRequest, IndexKind, ItemIndex, overlap_at_k, resolve_device


@dataclass(frozen=True)
class BenchConfig:
    n_items: Sequence[int] = (100_000, 1_000_000)
    dim: int = 64
    kinds: Sequence[IndexKind] = ("exact", "ivf", "hnsw")
    nprobes: Sequence[int] = (16, 64, 256)
    ef_searches: Sequence[int] = (32, 128, 512)
    hnsw_m: int = 32
    ef_construction: int = 40
    k: int = 10
    batch_size: int = 256
    single_queries: int = 200
    batch_queries: int = 1024
    recall_queries: int = 1000
    device: DeviceRequest | None = None
    seed: int = 0


@dataclass(frozen=True)
class BenchRow:
    n_items: int
    kind: IndexKind
    device: str
    setting: str
    build_s: float
    qps_batch1: float
    qps_batch: float
    recall_at_k: float


def unit_gaussian(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def queries_per_second(index: ItemIndex, queries: np.ndarray, k: int, batch_size: int) -> float:
    index.search(queries[:batch_size], k)  # warm-up: first-touch allocations, GPU kernel loading
    start = time.perf_counter()
    for begin in range(0, len(queries), batch_size):
        index.search(queries[begin : begin + batch_size], k)
    return len(queries) / (time.perf_counter() - start)


def _settings(index: ItemIndex, config: BenchConfig) -> Iterator[str]:
    """Re-tune `index` through its query-time settings, naming each."""
    if index.spec.kind == "ivf":
        for nprobe in config.nprobes:
            index.tune(nprobe=nprobe)
            yield f"nlist={index.spec.nlist} nprobe={nprobe}"
    elif index.spec.kind == "hnsw":
        for ef_search in config.ef_searches:
            index.tune(ef_search=ef_search)
            yield f"M={config.hnsw_m} efC={config.ef_construction} efSearch={ef_search}"
    else:
        yield "brute force"


def _n_steps(config: BenchConfig, with_gpu: bool) -> int:
    per_size = {"exact": 1, "ivf": len(config.nprobes), "hnsw": len(config.ef_searches)}
    gpu_copies = {"exact": int(with_gpu), "ivf": int(with_gpu), "hnsw": 0}
    return len(config.n_items) * sum(per_size[kind] * (1 + gpu_copies[kind]) for kind in config.kinds)


def run_benchmark(config: BenchConfig) -> list[BenchRow]:
    """Build each kind for each catalogue size on CPU (plus a GPU copy when one is used), then measure."""
    with_gpu = resolve_device("exact", config.device) == "gpu"
    rng = np.random.default_rng(config.seed)
    rows: list[BenchRow] = []
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns) as progress:
        task = progress.add_task("benchmark", total=_n_steps(config, with_gpu))
        for n_items in config.n_items:
            progress.update(task, description=f"{n_items:,} items: generating")
            items = unit_gaussian(rng, n_items, config.dim)
            single = unit_gaussian(rng, config.single_queries, config.dim)
            batched = unit_gaussian(rng, config.batch_queries, config.dim)
            recall_queries = unit_gaussian(rng, config.recall_queries, config.dim)
            progress.update(task, description=f"{n_items:,} items: ground truth")
            truth = ItemIndex.build(items, "exact", device="cpu").search(recall_queries, config.k)[1]
            for kind in config.kinds:
                progress.update(task, description=f"{n_items:,} items: building {kind}")
                start = time.perf_counter()
                cpu_index = ItemIndex.build(
                    items,
                    kind,
                    hnsw_m=config.hnsw_m,
                    ef_construction=config.ef_construction,
                    device="cpu",
                )
                build_s = time.perf_counter() - start
                copies = [cpu_index, cpu_index.to("gpu")] if with_gpu and kind != "hnsw" else [cpu_index]
                for index in copies:
                    for setting in _settings(index, config):
                        step = f"{n_items:,} items: {kind} on {index.device}, {setting}"
                        progress.update(task, description=step)
                        rows.append(
                            BenchRow(
                                n_items=n_items,
                                kind=kind,
                                device=index.device,
                                setting=setting,
                                build_s=build_s,
                                qps_batch1=queries_per_second(index, single, config.k, 1),
                                qps_batch=queries_per_second(index, batched, config.k, config.batch_size),
                                recall_at_k=overlap_at_k(index.search(recall_queries, config.k)[1], truth),
                            )
                        )
                        progress.advance(task)
    return rows


def results_table(rows: Sequence[BenchRow], config: BenchConfig, threads: int) -> Table:
    table = Table(
        title=f"FAISS inner-product search, d={config.dim}, k={config.k}, {threads} faiss thread(s)",
    )
    for header in ("items", "kind", "device", "setting", "build s", "q/s batch 1"):
        table.add_column(header, justify="right" if header in ("items", "build s", "q/s batch 1") else "left")
    table.add_column(f"q/s batch {config.batch_size}", justify="right")
    table.add_column(f"recall@{config.k}", justify="right")
    for row in rows:
        table.add_row(
            f"{row.n_items:,}",
            row.kind,
            row.device,
            row.setting,
            f"{row.build_s:.1f}",
            f"{row.qps_batch1:,.0f}",
            f"{row.qps_batch:,.0f}",
            f"{row.recall_at_k:.3f}",
        )
    return table
