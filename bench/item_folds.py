"""Next-item quality on rolling-origin folds of online-retail: for each chosen calendar month, the data ends
with that month, which is the test period (`load_online_retail(test_month=...)`); the model is trained as
`bundlecast train` does (epochs chosen on the 4 weeks before the month, then its members refit on everything
before it) and ranked side by side with the baselines, all fit on everything before the month.

    COLUMNS=160 python bench/item_folds.py     # every month from February to October 2011

Prints each fold's table, then per method the mean and the worst fold of HR@20 and MRR@20 (`--json`: every
figure as well). The `train` defaults are RetailRocket's, except the next-basket objective, which was chosen
on February-April: May-October are untouched by tuning. `--set` overrides a `SASRecConfig` or `TrainConfig`
field (for a quick look; the report uses none).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from model import Recommender
from model.baselines import Popularity, SequentialRules, SessionKNN
from model.data import Dataset, default_data_path, load_online_retail
from model.evaluate import MethodResult, Prefitted, Scorer, evaluate, format_table
from model.recommender import RecommenderScorer
from model.sasrec.model import SASRecConfig
from model.sasrec.train import TrainConfig, train_artifact
from model.vocab import ItemVocab

METRICS = ("HR@20", "MRR@20")


def without_baskets(dataset: Dataset) -> Dataset:
    """The dataset minus its invoices, so that the artifact skips the complement model (not ranked here)."""
    return dataclasses.replace(
        dataset, baskets=[], basket_customers=[], test_baskets=[], all_baskets=[], all_basket_customers=[]
    )


def fold(path: Path, month: str, model_config: SASRecConfig, config: TrainConfig) -> list[MethodResult]:
    held_out = without_baskets(load_online_retail(path, test_month=month))
    full = without_baskets(load_online_retail(path, valid_weeks=0, test_month=month))
    with tempfile.TemporaryDirectory() as out:
        version = train_artifact(held_out, Path(out), model_config, config, refit_on=full)
        vocab = ItemVocab.from_sequences(session.items for session in full.train)
        report = json.loads((version / "metrics.json").read_text())
        model = Prefitted(RecommenderScorer(Recommender.load(version), vocab), report["train_seconds"])
        scorers: list[Scorer] = [Popularity(), SequentialRules(), SessionKNN(), model]
        return evaluate(scorers, full.train, full.test, vocab)


def summary(folds: dict[str, list[MethodResult]]) -> Table:
    table = Table(title="Rolling-origin folds: mean and worst fold")
    table.add_column("method")
    for metric in METRICS:
        table.add_column(f"{metric} mean", justify="right")
        table.add_column(f"{metric} worst (month)", justify="right")
    for row, first in enumerate(next(iter(folds.values()))):
        cells = []
        for metric in METRICS:
            values = {month: results[row].metrics[metric] for month, results in folds.items()}
            worst = min(values, key=values.__getitem__)
            cells += [f"{sum(values.values()) / len(values):.4f}", f"{values[worst]:.4f} ({worst})"]
        table.add_row(first.name, *cells)
    return table


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument(
        "--months", default=",".join(f"2011-{m:02d}" for m in range(2, 11)), help="comma-separated YYYY-MM"
    )
    parser.add_argument("--data", type=Path, default=None, help="online-retail file (default: ../shared)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="config override")
    parser.add_argument("--json", action="store_true", help="then every fold's figures as one JSON line")
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    model_fields = {f.name for f in dataclasses.fields(SASRecConfig)}
    model_config = SASRecConfig(n_items=0, **{k: v for k, v in overrides.items() if k in model_fields})
    config = TrainConfig(**{k: v for k, v in overrides.items() if k not in model_fields})
    path = args.data or default_data_path("online-retail")
    console = Console()
    folds: dict[str, list[MethodResult]] = {}
    for month in args.months.split(","):
        folds[month] = fold(path, month, model_config, config)
        table = format_table(folds[month])
        table.title = f"{month}: {table.title}"
        console.print(table)
    console.print(summary(folds))
    if args.json:
        print(json.dumps({m: [dataclasses.asdict(r) for r in results] for m, results in folds.items()}))


if __name__ == "__main__":
    main()
