"""How far back the drivers of explanations reach: the share of the top-k items' drivers that are events
older than the last `--recent` ones, when the attribution window holds the last 10 events (the default).

A smaller window would cut the model stage (each attributed event is one more model input per user), but
only at the price of the explanations that name those older events. Prints one line.

    python bench/attribution_window.py --model ARTIFACT_ROOT [--cases 600] [--recent 5] [--k 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model import Recommender
from model.data import load_dataset
from model.explain import ATTRIBUTION_WINDOW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root (an online-retail model)")
    parser.add_argument("--cases", type=int, default=600, help="online-retail test cases (their histories)")
    parser.add_argument("--recent", type=int, default=5, help="the smaller window in question")
    parser.add_argument("--k", type=int, default=5, help="top items whose drivers are counted")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = Recommender.load(args.model)
    cases = load_dataset("online-retail", holdout_validation=False).test[: args.cases]
    histories, types = [list(c.prefix) for c in cases], [list(c.prefix_types) for c in cases]
    attribution = rec.attribute(histories, types, ATTRIBUTION_WINDOW)
    older = total = 0
    for row, ranked in enumerate(rec.recommend_batch(histories, types, k=args.k)):
        history, positions = histories[row], attribution.variants.positions[row]
        if sum(item in rec.vocab for item in history) <= args.recent:
            continue
        cutoff = len(history) - args.recent
        for drivers in attribution.drivers(rec, row, [item for item, _ in ranked]):
            for driver in drivers:  # a driver is named by its item; its latest attributed event counts
                position = max(p for p in positions if history[p] == driver.item_id)
                total += 1
                older += position < cutoff
    print(
        f"{total} drivers of the top {args.k} items of {len(cases)} histories; from events older than the "
        f"last {args.recent}: {older / max(total, 1):.3f}"
    )


if __name__ == "__main__":
    main()
