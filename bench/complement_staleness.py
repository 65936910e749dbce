"""What the weeks a complement model has not seen cost: each month completed by the complement model that
`bundlecast train` ships, fitted on every earlier invoice and on those up to `--weeks` before the month,
against co-purchase counts fitted on every earlier invoice (as #24's check on later invoices fits them).

`train` holds its last 4 weeks out of the session model to score it; a complement model fitted only on the
invoices before them serves the weeks after the data 4 weeks staler than it could.

    python bench/complement_staleness.py --months 2011-02,2011-06,2011-10 [--weeks 4]

Prints one line per month: Recall@10 (capped at 10) of the model and of co-purchase counts on each fit
period, and the stale model's ratio to co-purchase counts on every earlier invoice.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from model.complement.evaluate import CoPurchaseCompleter, completion_cases, evaluate_completion
from model.complement.ranker import fit_complements
from model.data import basket_customers_of, baskets_of, catalog_of, default_data_path, read_online_retail


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--months", default="2011-02,2011-06,2011-10", help="comma-separated YYYY-MM")
    parser.add_argument("--weeks", type=int, default=4, help="weeks the stale fit leaves out")
    args = parser.parse_args()
    lines = read_online_retail(default_data_path("online-retail"))
    months = lines["ts"].dt.to_period("M")
    for name in args.months.split(","):
        month = pd.Period(name, "M")
        before = lines[months < month]
        stale = before[before["ts"] < month.start_time - pd.Timedelta(weeks=args.weeks)]
        cases = completion_cases(baskets_of(lines[months == month]))
        figures = {}
        for period, fit in (("all", before), ("stale", stale)):
            started = time.perf_counter()
            baskets = baskets_of(fit)
            model = fit_complements(baskets, catalog_of(fit), basket_customers_of(fit))
            figures[period] = (
                evaluate_completion(model, cases, 10).recall,
                evaluate_completion(CoPurchaseCompleter(baskets), cases, 10).recall,
                len(baskets),
                time.perf_counter() - started,
            )
        parts = [
            f"{period}: model {model:.4f} co-purchase {counted:.4f} ({baskets} baskets, {seconds:.0f} s)"
            for period, (model, counted, baskets, seconds) in figures.items()
        ]
        ratio = figures["stale"][0] / figures["all"][1]
        print(f"{name}  " + " | ".join(parts) + f" | stale model / co-purchase, all {ratio:.3f}", flush=True)


if __name__ == "__main__":
    main()
