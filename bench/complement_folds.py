"""The learned complement ranker on chosen monthly folds, with its settings overridden: how its knobs were
chosen (on the February-April 2011 folds only; BENCHMARKS.md, decisions).

    python bench/complement_folds.py --months 2011-02,2011-03,2011-04 --set prior_weight=0 --set window=500

Prints each fold's Recall@10 (capped at 10) of the ranker and of co-purchase counts, their ratio and the fit
time, then the ratio of the mean recalls and the worst fold (`bundlecast bundles evaluate --folds monthly` is
the report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from model.complement.evaluate import (
    CoPurchaseCompleter,
    completion_cases,
    evaluate_completion,
    monthly_folds,
)
from model.complement.ranker import RankerConfig, fit_ranked
from model.data import default_data_path, read_online_retail


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--months", default="2011-02,2011-03,2011-04", help="comma-separated YYYY-MM folds")
    parser.add_argument("--set", action="append", default=[], metavar="KNOB=VALUE", help="RankerConfig field")
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.set)}
    config = dataclasses.replace(RankerConfig(), **overrides)
    months = args.months.split(",")
    lines = read_online_retail(default_data_path("online-retail"))
    folds = [fold for fold in monthly_folds(lines) if fold.month in months]
    ranked, counted, ratios = [], [], []
    for fold in folds:
        cases = completion_cases(fold.test_baskets)
        started = time.perf_counter()
        model = fit_ranked(fold.fit_baskets, fold.catalog, fold.fit_customers, config=config)
        seconds = time.perf_counter() - started
        recall = evaluate_completion(model, cases, 10).recall
        baseline = evaluate_completion(CoPurchaseCompleter(fold.fit_baskets), cases, 10).recall
        ranked.append(recall)
        counted.append(baseline)
        ratios.append(recall / baseline)
        figures = f"ranker {recall:.4f}  co-purchase {baseline:.4f}  ratio {ratios[-1]:.3f}"
        print(f"{fold.month}  {figures}  {seconds:.0f} s")
    print(f"mean ratio {np.mean(ranked) / np.mean(counted):.3f}, worst fold {min(ratios):.3f}  ({config})")


if __name__ == "__main__":
    main()
