"""How the complement ranker's training labels and served blend were chosen, several at once: per fold, one
pass over the label windows' signals, one booster per label weighting on the same candidate pairs, each
served at several blends (hand-set row, raw co-purchase row). Much faster than one
`bench/complement_folds.py` run per setting; for the shipped setting (recall-share 0.5:0) it gives that
script's figures (February 1.221). The windows, signals and candidates are the ranker's own
(`model.complement.ranker.label_windows`).

    python bench/complement_variants.py --months 2011-02,2011-04 --blend 0.5:0 --blend 0.3:0.1 --by-size

Label weightings (a basket of s products holding the anchor a and the candidate b):
  recall-share  (shipped) the pair earns 1 / (s - 1), anchors weigh the baskets holding them
  capped        the pair earns 1 / min(s - 1, 10), as the capped Recall@10 counts a hit
  per-invoice   labels as shipped, but each basket weighs 1 / s as an anchor (the evaluation takes one per
                invoice)
  as-metric     both: the pair earns 1 / (s x min(s - 1, 10)), anchors weigh 1 / s per basket

Prints each fold's Recall@10 ratio to co-purchase counts per setting, then per setting the ratio of the mean
recalls; `--by-size` adds the first setting's recall against co-purchase counts by invoice size.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.complement.evaluate import (
    Completer,
    CoPurchaseCompleter,
    completion_cases,
    evaluate_completion,
    monthly_folds,
)
from model.complement.model import ComplementConfig, ComplementModel
from model.complement.ranker import RankerConfig, Signals, _pick, _row_softmax, fit_booster, label_windows
from model.data import default_data_path, read_online_retail

LABELS = ("recall-share", "capped", "per-invoice", "as-metric")
SIZES = ((1, 3), (4, 9), (10, 19), (20, 49), (50, 10**9))  # other products in the invoice


def pair_weights(label: str, others: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per basket (others = its products - 1): what each of its pairs earns, what it adds to the anchor's
    label denominator, and what it adds to the anchor's training weight."""
    ones, capped, per_invoice = np.ones_like(others), np.minimum(others, 10.0), 1.0 / (others + 1.0)
    if label == "recall-share":
        return 1.0 / others, ones, ones
    if label == "capped":
        return 1.0 / capped, ones, ones
    if label == "per-invoice":
        return 1.0 / others, ones, per_invoice
    return per_invoice / capped, per_invoice, per_invoice


def training_sets(
    fold_baskets: Sequence[Sequence[str]],
    customers: Sequence[str | None],
    catalog: pd.DataFrame,
    labels: Sequence[str],
    config: RankerConfig,
    prior_config: ComplementConfig,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Features (shared), and per label weighting its labels and anchor weights, over the label windows."""
    features, targets, weights = [], defaultdict(list), defaultdict(list)
    for signals, window, a, b in label_windows(fold_baskets, customers, catalog, prior_config, config):
        others = np.maximum(np.asarray(window.sum(axis=1)).ravel() - 1.0, 1.0)
        features.append(signals.features(a, b))
        for label in labels:
            earned, denominator, weight = pair_weights(label, others)
            together = (window.T @ sp.diags(earned) @ window).tocsr()
            together.setdiag(0.0)
            targets[label].append(_pick(together, a, b) / np.asarray(window.T @ denominator).ravel()[a])
            weights[label].append(np.asarray(window.T @ weight).ravel()[a])
    return (
        np.concatenate(features),
        {k: np.concatenate(v) for k, v in targets.items()},
        {k: np.concatenate(v) for k, v in weights.items()},
    )


def recall_by_size(
    model: Completer, baseline: Completer, cases: Sequence[tuple[str, Sequence[str]]]
) -> list[str]:
    """The first setting's capped Recall@10 against co-purchase counts', by the invoice's other products."""
    found = {"model": defaultdict(list), "co-purchase": defaultdict(list)}
    for anchor, targets in cases:
        bucket = next(i for i, (low, high) in enumerate(SIZES) if low <= len(targets) <= high)
        for name, completer in (("model", model), ("co-purchase", baseline)):
            shown = {item for item, _ in completer.complete([anchor], 10)}
            found[name][bucket].append(sum(t in shown for t in targets) / min(len(targets), 10))
    lines = []
    for i, (low, high) in enumerate(SIZES):
        ours, theirs = found["model"][i], found["co-purchase"][i]
        if ours:
            span = f"{low}+" if high > 10**6 else f"{low}-{high}"
            lines.append(
                f"    {span:>6} others: {len(ours):>5} invoices  {np.mean(ours):.4f} vs {np.mean(theirs):.4f}"
            )
    return lines


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--months", default="2011-02,2011-03,2011-04", help="comma-separated YYYY-MM folds")
    parser.add_argument("--labels", default=",".join(LABELS), help=f"comma-separated, of {', '.join(LABELS)}")
    parser.add_argument(
        "--blend",
        action="append",
        metavar="W:V",
        help="hand-set weight W, co-purchase weight V (default 0.5:0)",
    )
    parser.add_argument("--by-size", action="store_true", help="the first setting's recall by invoice size")
    args = parser.parse_args()
    labels = args.labels.split(",")
    if unknown := set(labels) - set(LABELS):
        parser.error(f"unknown label weighting: {', '.join(sorted(unknown))}")
    blends = [tuple(float(x) for x in blend.split(":")) for blend in (args.blend or ["0.5:0"])]
    config, prior_config = RankerConfig(), ComplementConfig()
    lines = read_online_retail(default_data_path("online-retail"))
    folds = [fold for fold in monthly_folds(lines) if fold.month in args.months.split(",")]
    recalls: dict[str, list[float]] = defaultdict(list)
    for fold in folds:
        started = time.perf_counter()
        baskets, customers = fold.fit_baskets, fold.fit_customers
        features, targets, weights = training_sets(
            baskets, customers, fold.catalog, labels, config, prior_config
        )
        served = Signals.compute(baskets, customers, fold.catalog, prior_config, config.recent)
        a, b = served.candidates(np.arange(len(served.vocab)), config)
        serving_features, hand_set = served.features(a, b), _pick(served.prior, a, b)
        counted = _pick(served.pairs, a, b)
        counted = counted / np.maximum(np.bincount(a, weights=counted, minlength=len(served.vocab))[a], 1e-12)
        cases = completion_cases(fold.test_baskets)
        baseline = CoPurchaseCompleter(baskets)
        recalls["co-purchase"].append(evaluate_completion(baseline, cases, 10).recall)
        n, prior = len(served.vocab), served.prior_model
        for label in labels:
            learned = _row_softmax(
                a,
                fit_booster(features, targets[label], weights[label] / weights[label].mean(), config).predict(
                    serving_features, raw_score=True
                ),
            )
            for w, v in blends:
                scores = (1 - w - v) * learned + w * hand_set + v * counted
                matrix = sp.csr_matrix((scores.astype(np.float32), (a, b)), shape=(n, n))
                model = ComplementModel(prior.vocab, matrix, prior.baskets, prior.popularity, prior.config)
                setting = f"{label} {w}:{v}"
                recalls[setting].append(evaluate_completion(model, cases, 10).recall)
                ratio = recalls[setting][-1] / recalls["co-purchase"][-1]
                print(
                    f"{fold.month}  {setting:<22} {recalls[setting][-1]:.4f}  ratio {ratio:.3f}", flush=True
                )
                if args.by_size and label == labels[0] and (w, v) == blends[0]:
                    print("\n".join(recall_by_size(model, baseline, cases)), flush=True)
        seconds = time.perf_counter() - started
        print(f"{fold.month}  co-purchase {recalls['co-purchase'][-1]:.4f}, {seconds:.0f} s")
    base = np.mean(recalls.pop("co-purchase"))
    for setting, values in recalls.items():
        print(f"{setting:<22} ratio of mean recalls {np.mean(values) / base:.3f}")


if __name__ == "__main__":
    main()
