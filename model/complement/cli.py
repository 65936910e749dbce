"""`bundlecast bundles evaluate`: basket completion, bundle quality and explanation faithfulness, one run."""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from model.answers import Query
from model.bundles import assemble
from model.complement.evaluate import (
    CompletionResult,
    CoPurchaseCompleter,
    Fold,
    PopularityCompleter,
    completion_cases,
    evaluate_completion,
    monthly_folds,
)
from model.complement.model import ComplementModel
from model.complement.ranker import RankerConfig, fit_complements
from model.data import default_data_path, load_dataset, read_online_retail
from model.neardup import ProductKinds
from model.recommender import Recommender

app = typer.Typer(help="Complementary products and bundles.", no_args_is_help=True)


@app.callback()
def bundles() -> None:
    """Complementary products and bundles: evaluation against popularity and co-purchase counts."""


VALID_FRACTION = 0.12  # the latest training baskets (about the last 4 training weeks) are the validation set


class Split(StrEnum):
    valid = "valid"
    test = "test"


class Folds(StrEnum):
    none = "none"
    monthly = "monthly"


@dataclass(frozen=True)
class BundleQuality:
    bundles: int
    near_duplicate_share: float
    mean_kinds: float
    mean_size: float
    coverage: float


def bundle_quality(bundles: list[tuple[str, ...]], kinds: ProductKinds, catalogue_size: int) -> BundleQuality:
    if not bundles:
        return BundleQuality(0, 0.0, 0.0, 0.0, 0.0)
    return BundleQuality(
        bundles=len(bundles),
        near_duplicate_share=float(np.mean([bool(kinds.near_duplicate_pairs(b)) for b in bundles])),
        mean_kinds=float(np.mean([len({kinds.kind(i) for i in b}) for b in bundles])),
        mean_size=float(np.mean([len(b) for b in bundles])),
        coverage=len({i for b in bundles for i in b}) / max(catalogue_size, 1),
    )


@app.command()
def evaluate(
    data: Annotated[
        Path | None, typer.Option(help="Online Retail CSV(.gz); default: the shared data directory")
    ] = None,
    split: Annotated[
        Split,
        typer.Option(
            help="valid: fit on older training baskets, score the latest; "
            "test: fit on everything before the test weeks, score them"
        ),
    ] = Split.test,
    model_dir: Annotated[
        Path | None,
        typer.Option("--model", help="Trained artifact for bundles and faithfulness (leave out to skip)"),
    ] = None,
    k: Annotated[int, typer.Option(help="Cut-off for Recall/Hit")] = 10,
    max_cases: Annotated[int, typer.Option(help="Test cases for bundles and faithfulness")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the random session item in the faithfulness check")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON on stdout")] = False,
    folds: Annotated[
        Folds,
        typer.Option(
            help="monthly: rolling-origin folds instead of one split, each month from Feb 2011 completed by "
            "every method fitted on all earlier invoices (--split and --model do not apply)"
        ),
    ] = Folds.none,
    first_month: Annotated[
        str, typer.Option(help="With --folds monthly: the first month completed (YYYY-MM; later ones follow)")
    ] = "2011-02",
    label_windows: Annotated[
        int,
        typer.Option(
            min=1,
            help="Label windows the learned complement ranker trains on (fewer: faster, less to learn from)",
        ),
    ] = RankerConfig.label_windows,
) -> None:
    """Basket completion (model vs popularity vs co-purchase counts), bundle quality and faithfulness."""
    ranker = RankerConfig(label_windows=label_windows)
    if folds is Folds.monthly:
        path = data if data is not None else default_data_path("online-retail")
        report = evaluate_folds(monthly_folds(read_online_retail(path), first_month), k, ranker)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            print_folds(report)
        return
    # Test: every method is fitted on all baskets before the test weeks (validation weeks folded back in,
    # as the main model is refit); valid: on the training period only, its latest baskets held out.
    dataset = load_dataset("online-retail", data, holdout_validation=split is Split.valid)
    if split is Split.valid:
        cut = len(dataset.baskets) - int(len(dataset.baskets) * VALID_FRACTION)
        fit_baskets, held_out = dataset.baskets[:cut], dataset.baskets[cut:]
    else:
        fit_baskets, held_out = dataset.baskets, dataset.test_baskets
    cases = completion_cases(held_out)
    started = time.perf_counter()
    fit_customers = dataset.basket_customers[: len(fit_baskets)]
    complements = fit_complements(fit_baskets, dataset.catalog, fit_customers, ranker)
    fit_seconds = time.perf_counter() - started
    results: dict[str, CompletionResult] = {
        "popularity": evaluate_completion(PopularityCompleter(fit_baskets), cases, k, "popularity"),
        "co-purchase counts": evaluate_completion(CoPurchaseCompleter(fit_baskets), cases, k, "co-purchase"),
        "complement model": evaluate_completion(complements, cases, k, "complement"),
    }
    kinds = ProductKinds.from_catalog(dataset.catalog)
    catalogue_size = 0 if dataset.catalog is None else len(dataset.catalog)
    report: dict[str, object] = {
        "split": split.value,
        "k": k,
        "fit_seconds": round(fit_seconds, 2),
        "completion": {name: asdict(result) for name, result in results.items()},
        "recall_ratio_vs_copurchase": results["complement model"].recall
        / max(results["co-purchase counts"].recall, 1e-12),
    }
    anchors_only = [
        assembled.items
        for anchor, _ in cases[:max_cases]
        for assembled in assemble([anchor], complements, kinds, lambda _: 0.0, {}, n=1, size=3)
    ]
    report["bundles_from_anchor"] = asdict(bundle_quality(anchors_only, kinds, catalogue_size))
    if model_dir is not None:
        rec = Recommender.load(model_dir)
        test_cases = dataset.test[:max_cases]
        histories = [list(case.prefix) for case in test_cases]
        types = [list(case.prefix_types) for case in test_cases]
        batches = tqdm(range(0, len(histories), 64), desc="bundles", disable=None, leave=False)
        served = [
            tuple(bundle.items)
            for start in batches
            for answer in rec.answer_batch(
                [
                    Query(h, t)
                    for h, t in zip(histories[start : start + 64], types[start : start + 64], strict=True)
                ],
                k=0,
            )
            for bundle in answer.bundles
        ]
        report["bundles_for_users"] = asdict(bundle_quality(served, kinds, catalogue_size))
        report["faithfulness"] = faithfulness(rec, histories, types, seed)
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def faithfulness(
    rec: Recommender, histories: list[list[str]], types: list[list[str]], seed: int
) -> dict[str, float | int]:
    """Share of cases where leaving out the strongest named event lowers the top item's score more than
    leaving out a random other event of the attributed window (strictly more: ties count as failures).

    The explanation picks the strongest event; the drops that judge it come from encoding the history
    without each of the two events on its own (`Recommender.encode`, the plain forward), not from the
    serving path's shared-rows variants, so the check holds any attribution to real leave-one-out."""
    rng = random.Random(seed)
    usable = [i for i, h in enumerate(histories) if len({x for x in h if x in rec.vocab}) >= 2]
    wins, total = 0, 0
    for start in tqdm(range(0, len(usable), 64), desc="faithfulness", disable=None, leave=False):
        rows = usable[start : start + 64]
        batch_histories = [histories[i] for i in rows]
        batch_types = [types[i] for i in rows]
        top = [answer[0][0] for answer in rec.recommend_batch(batch_histories, batch_types, k=1)]
        attribution = rec.attribute(batch_histories, batch_types)
        judged: list[tuple[str, list[str], list[str], int, int]] = []
        for row, item in enumerate(top):
            positions = attribution.variants.positions[row]
            if len(positions) < 2 or item not in rec.vocab:
                continue
            strongest = int(np.argmax(attribution.drops(rec, row, [item])[:, 0]))
            other = rng.choice([p for p in range(len(positions)) if p != strongest])
            history, event_types = batch_histories[row], batch_types[row]
            judged.append((item, history, event_types, positions[strongest], positions[other]))
        if not judged:
            continue
        inputs = [  # per judged case: the history whole, without the strongest, without the other
            (without(history, left_out), without(event_types, left_out))
            for _, history, event_types, *left_outs in judged
            for left_out in (None, *left_outs)
        ]
        encoded = rec.encode([h for h, _ in inputs], [t for _, t in inputs])
        for n, (item, *_) in enumerate(judged):
            column = np.array([rec.vocab.get(item)])
            full, no_strongest, no_other = encoded[[3 * n, 3 * n + 1, 3 * n + 2]].scores(
                rec.item_vectors, column
            )[:, 0]
            wins += bool(full - no_strongest > full - no_other)
            total += 1
    return {"cases": total, "strongest_beats_random": wins / max(total, 1)}


def without(values: list[str], position: int | None) -> list[str]:
    """`values` without the element at `position`; all of them for None."""
    return values if position is None else [*values[:position], *values[position + 1 :]]


METHODS = ("popularity", "co-purchase counts", "hand-set complements", "complement model")


def evaluate_folds(folds: list[Fold], k: int, ranker: RankerConfig) -> dict[str, object]:
    """Every method on every fold, with the mean and the worst fold of the shipped model's Recall@k ratio
    to co-purchase counts (the bar a complement model has to clear everywhere). The hand-set model, the
    learned ranker's prior and fallback, is shown beside it."""
    rows = []
    for fold in tqdm(folds, desc="folds", unit="month", disable=None, leave=False):
        cases = completion_cases(fold.test_baskets)
        completers = (
            PopularityCompleter(fold.fit_baskets),
            CoPurchaseCompleter(fold.fit_baskets),
            ComplementModel.fit(fold.fit_baskets, fold.catalog, customers=fold.fit_customers),
            fit_complements(fold.fit_baskets, fold.catalog, fold.fit_customers, ranker),
        )
        results = {
            name: asdict(evaluate_completion(completer, cases, k, f"{fold.month} {name}"))
            for name, completer in zip(METHODS, completers, strict=True)
        }
        ratio = results["complement model"]["recall"] / max(results["co-purchase counts"]["recall"], 1e-12)
        rows.append({"month": fold.month, "fit_baskets": len(fold.fit_baskets), **results, "ratio": ratio})
    mean = {name: float(np.mean([row[name]["recall"] for row in rows])) for name in METHODS}
    worst = min(rows, key=lambda row: row["ratio"])
    return {
        "k": k,
        "folds": rows,
        "mean_recall": mean,
        "mean_ratio": mean["complement model"] / max(mean["co-purchase counts"], 1e-12),
        "worst_fold": {"month": worst["month"], "ratio": worst["ratio"]},
    }


def print_folds(report: dict[str, object]) -> None:
    out = Console()
    table = Table(
        title=f"Basket completion on monthly rolling-origin folds, Recall@{report['k']} / Hit@{report['k']}"
    )
    for column in ("month", "invoices", *METHODS, "ratio"):
        table.add_column(column)
    rows = report["folds"]
    assert isinstance(rows, list)
    for row in rows:
        cells = [f"{row[name]['recall']:.4f} / {row[name]['hit']:.4f}" for name in METHODS]
        table.add_row(row["month"], f"{row['popularity']['baskets']:,}", *cells, f"{row['ratio']:.3f}")
    mean = report["mean_recall"]
    assert isinstance(mean, dict)
    table.add_row("mean", "", *(f"{mean[name]:.4f}" for name in METHODS), f"{report['mean_ratio']:.3f}")
    out.print(table)
    worst = report["worst_fold"]
    assert isinstance(worst, dict)
    out.print(
        f"worst fold: {worst['month']}, Recall@{report['k']} ratio to co-purchase counts {worst['ratio']:.3f}"
    )


def print_report(report: dict[str, object]) -> None:
    out = Console()
    table = Table(title=f"Basket completion ({report['split']}), anchor = first line, k = {report['k']}")
    for column in ("method", "Recall", "Hit", "baskets"):
        table.add_column(column)
    completion = report["completion"]
    assert isinstance(completion, dict)
    for name, result in completion.items():
        table.add_row(name, f"{result['recall']:.4f}", f"{result['hit']:.4f}", str(result["baskets"]))
    out.print(table)
    out.print(
        f"Recall ratio vs co-purchase counts: {report['recall_ratio_vs_copurchase']:.3f}; "
        f"fit {report['fit_seconds']} s"
    )
    for key in ("bundles_from_anchor", "bundles_for_users", "faithfulness"):
        if key in report:
            out.print(f"{key}: {report[key]}")
