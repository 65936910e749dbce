"""Offline commands: `bundlecast train` and `bundlecast evaluate`."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console

from model.baselines import Popularity, SequentialRules, SessionKNN
from model.data import load_dataset
from model.evaluate import Prefitted, Scorer, evaluate, format_table, results_to_json
from model.recommender import Recommender, RecommenderScorer
from model.sasrec.model import SASRecConfig
from model.sasrec.train import TrainConfig, train_artifact
from model.vocab import ItemVocab

console = Console(stderr=True)


class DatasetChoice(StrEnum):
    retailrocket = "retailrocket-sessions"
    online_retail = "online-retail"
    events = "events"


class Split(StrEnum):
    valid = "valid"
    test = "test"


DATASET = typer.Option(..., "--dataset", "-d", help="Which adapter reads --data.")
DATA = typer.Option(
    None,
    "--data",
    help="Dataset path (a directory for retailrocket-sessions, a file otherwise). "
    "Default: the copy under $BUNDLECAST_DATA_DIR (../shared/data).",
)


def train(
    dataset: DatasetChoice = DATASET,
    data: Path | None = DATA,
    out: Path = typer.Option(
        ..., "--out", "-o", help="Artifact root; each run adds a new version inside it."
    ),
    epochs: int = typer.Option(TrainConfig.epochs, help="Most epochs; early stopping may end sooner."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Most session windows per step."),
    step_targets: int = typer.Option(
        TrainConfig.step_targets, help="Most predicted events per step (long sessions are split over steps)."
    ),
    lr: float = typer.Option(TrainConfig.lr, help="AdamW learning rate."),
    negatives: int = typer.Option(
        TrainConfig.negatives, help="Shared uniform negatives per step (sampled softmax); 0 = full softmax."
    ),
    decay_epochs: int = typer.Option(
        TrainConfig.decay_epochs, help="Epochs over which the learning rate decays linearly (0 = constant)."
    ),
    patience: int = typer.Option(
        TrainConfig.patience, help="Epochs without validation gain before stopping."
    ),
    dim: int = typer.Option(SASRecConfig.dim, help="Embedding size."),
    layers: int = typer.Option(SASRecConfig.n_layers, help="Attention blocks."),
    heads: int = typer.Option(SASRecConfig.n_heads, help="Attention heads per block."),
    dropout: float = typer.Option(SASRecConfig.dropout, help="Dropout rate."),
    max_len: int = typer.Option(SASRecConfig.max_len, help="Most recent events the model reads."),
    seed: int = typer.Option(TrainConfig.seed, help="Random seed (data order, init, negatives)."),
    device: str = typer.Option(TrainConfig.device, help="auto | cpu | cuda."),
    threads: int = typer.Option(TrainConfig.threads, help="CPU threads for torch (0 = one per core)."),
    members: int = typer.Option(
        TrainConfig.members,
        min=1,
        help="Models published, each trained with its own seed (seed, seed + 1, ...) and served as their "
        "mean: more members rank better and cost that many times the refit time and serving compute.",
    ),
    refit: bool = typer.Option(
        True,
        help="After validation picks the epoch count, train again on training + validation data "
        "and publish that model (what `evaluate --split test` expects).",
    ),
) -> None:
    """Train the SASRec session model; publish a new artifact version (weights, embeddings, FAISS index)."""
    ds = load_dataset(dataset.value, data)
    console.print(
        f"[bold]{ds.name}[/]: {len(ds.train):,} training sessions, {len(ds.valid):,} validation cases"
    )
    model_config = SASRecConfig(
        n_items=0, max_len=max_len, dim=dim, n_layers=layers, n_heads=heads, dropout=dropout
    )
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        step_targets=step_targets,
        lr=lr,
        negatives=negatives,
        patience=patience,
        decay_epochs=decay_epochs,
        seed=seed,
        device=device,
        threads=threads,
        members=members,
    )
    full = load_dataset(dataset.value, data, holdout_validation=False) if refit else None
    version_dir = train_artifact(ds, out, model_config, config, refit_on=full)
    console.print(f"published [bold]{version_dir}[/]")


def evaluate_command(
    dataset: DatasetChoice = DATASET,
    data: Path | None = DATA,
    model: Path | None = typer.Option(
        None, "--model", "-m", help="Artifact root or version directory of a trained model to compare."
    ),
    split: Split = typer.Option(Split.test, help="Cases to report on (tune on valid, report test)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON to stdout."),
) -> None:
    """Full-ranking evaluation (no sampled negatives) of the baselines and the model, side by side; what
    each case's user bought is not ranked, as the stream never offers it.

    On `--split test` every method is fit on all training data (validation folded in), as `train --refit`
    does for the model; on `--split valid` on the training part only, and a refit model is refused there
    because it has seen the validation sessions.
    """
    ds = load_dataset(dataset.value, data, holdout_validation=split is Split.valid)
    vocab = ItemVocab.from_sequences(session.items for session in ds.train)
    scorers: list[Scorer] = [Popularity(), SequentialRules(), SessionKNN()]
    if model is not None:
        recommender = Recommender.load(model)
        report = json.loads((recommender.version_dir / "metrics.json").read_text())
        if split is Split.valid and "refit" in report:
            raise typer.BadParameter("this model was refit on the validation data; train it with --no-refit")
        scorers.append(
            Prefitted(
                RecommenderScorer(recommender, vocab),
                fit_seconds=report.get("train_seconds"),
                fit_peak_rss_mib=report.get("train_peak_rss_mib"),
            )
        )
    cases = ds.test if split is Split.test else ds.valid
    results = evaluate(scorers, ds.train, cases, vocab)
    if as_json:
        print(
            json.dumps(
                {"dataset": ds.name, "split": split.value, "results": results_to_json(results)}, indent=2
            )
        )
    else:
        Console().print(format_table(results))


def register(app: typer.Typer) -> None:
    """Mount the offline commands on the root CLI (kept here so the model room owns its commands)."""
    app.command("train")(train)
    app.command("evaluate")(evaluate_command)
