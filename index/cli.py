"""`bundlecast index ...` commands."""

from __future__ import annotations

import json
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from index.bench import BenchConfig, results_table, run_benchmark
from index.faiss_index import DeviceRequest, configure_threads

app = typer.Typer(no_args_is_help=True)


@app.callback()
def index() -> None:
    """FAISS item index: the top-k items for a batch of session vectors."""


class Kind(StrEnum):
    """Index kinds as a CLI choice (typer takes lists of enums, not of literals)."""

    exact = "exact"
    ivf = "ivf"
    hnsw = "hnsw"


@app.command()
def bench(
    n_items: Annotated[list[int], typer.Option(help="Catalogue sizes (repeat the flag).")] = [  # noqa: B006
        100_000,
        1_000_000,
    ],
    dim: Annotated[int, typer.Option(min=1, help="Embedding dimension.")] = 64,
    kind: Annotated[list[Kind], typer.Option(help="Index kinds (repeat).")] = list(Kind),  # noqa: B006
    nprobe: Annotated[list[int], typer.Option(help="IVF lists probed (repeat).")] = [16, 64, 256],  # noqa: B006
    ef_search: Annotated[list[int], typer.Option(help="HNSW efSearch (repeat).")] = [32, 128, 512],  # noqa: B006
    hnsw_m: Annotated[int, typer.Option(min=2, help="HNSW graph degree M.")] = 32,
    ef_construction: Annotated[int, typer.Option(min=1, help="HNSW efConstruction.")] = 40,
    k: Annotated[int, typer.Option(min=1, help="Results per query.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size of the batched measurement.")] = 256,
    single_queries: Annotated[int, typer.Option(min=1, help="Queries timed one at a time.")] = 200,
    batch_queries: Annotated[int, typer.Option(min=1, help="Queries timed in batches.")] = 1024,
    recall_queries: Annotated[int, typer.Option(min=1, help="Queries for recall vs exact.")] = 1000,
    device: Annotated[
        DeviceRequest | None,
        typer.Option(envvar="BUNDLECAST_FAISS_DEVICE", help="GPU rows are added when the GPU is used."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic items and queries.")] = 0,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the rows as JSON here.")] = (
        None
    ),
) -> None:
    """Queries/s at batch 1 and batch N, and recall@k against exact search, on normalised Gaussian items.

    faiss threads come from BUNDLECAST_FAISS_THREADS.
    """
    config = BenchConfig(
        n_items=tuple(n_items),
        dim=dim,
        kinds=tuple(choice.value for choice in kind),
        nprobes=tuple(nprobe),
        ef_searches=tuple(ef_search),
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        k=k,
        batch_size=batch_size,
        single_queries=single_queries,
        batch_queries=batch_queries,
        recall_queries=recall_queries,
        device=device,
        seed=seed,
    )
    rows = run_benchmark(config)
    Console().print(results_table(rows, config, configure_threads()))
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")


if __name__ == "__main__":
    app()
