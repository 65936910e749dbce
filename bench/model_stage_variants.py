"""Two ways to cut the serving forward of the shipped two-member model, measured before changing it:

- a shorter history window: the forward of each user's last 50 / 30 / 20 events with their leave-one-out
  variants (the shipped weights on shorter inputs: the cost a model trained on that window would have);
- explanations from member 0 alone: member 0 encodes the histories with their variants, the other member
  encodes the histories alone (retrieval still needs both), against both members encoding both.

For the second, explanations would then follow member 0's score drops instead of the ensemble's. On
online-retail test histories it prints how often member 0 names the same strongest driver as the ensemble for
each of the top `--k` items, and how often the event it names lowers the ensemble's score of the top item
more than a random other attributed event (the faithfulness check's bar, judged by the ensemble's own
leave-one-out).
One thread, best of 7 after two warm-up calls.

    python bench/model_stage_variants.py --model ARTIFACT_ROOT [--cases 600] [--k 5]
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model import Recommender
from model.data import load_dataset
from model.explain import ATTRIBUTION_WINDOW
from model.sasrec.encode import encode_history, encode_sessions, encode_without_one

CPU = torch.device("cpu")
Inputs = tuple[list[tuple[list[int], list[int]]], list[tuple[int, int]]]


def inputs(rec: Recommender, histories: list[list[str]], types: list[list[str]], window: int) -> Inputs:
    """Model inputs of each history's last `window` events, and its leave-one-out variants (as served)."""
    encoded = [
        encode_history(h[-window:], t[-window:], rec.vocab) for h, t in zip(histories, types, strict=True)
    ]
    encoded = [(items, kinds) for items, kinds in encoded if items]
    variants = [
        (source, j)
        for source, (items, _) in enumerate(encoded)
        for j in range(max(0, len(items) - ATTRIBUTION_WINDOW), len(items))
    ]
    return encoded, variants


def best_ms(call: Callable[[], object]) -> float:
    call(), call()
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root (a 2-member model)")
    parser.add_argument("--cases", type=int, default=600, help="online-retail test cases (their histories)")
    parser.add_argument("--k", type=int, default=5, help="top items whose strongest drivers are compared")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = Recommender.load(args.model)
    ensemble = rec.model
    if not hasattr(ensemble, "members"):
        raise SystemExit("the model has one member: nothing to compare")
    explainer, others = ensemble.members[0], list(ensemble.members[1:])
    cases = load_dataset("online-retail", holdout_validation=False).test[: args.cases]
    histories, types = [list(c.prefix) for c in cases], [list(c.prefix_types) for c in cases]

    print("model stage ms for 1 / 4 / 16 / 64 users")
    for window in (50, 30, 20):
        cost = []
        for users in (1, 4, 16, 64):
            encoded, variants = inputs(rec, histories[:users], types[:users], window)
            cost.append(best_ms(lambda e=encoded, v=variants: encode_without_one(ensemble, e, v, CPU)))
        print(f"  both members explain, last {window} events: " + " / ".join(f"{c:.1f}" for c in cost))
    cost = []
    for users in (1, 4, 16, 64):
        encoded, variants = inputs(rec, histories[:users], types[:users], 50)

        def member_0_explains(e: list = encoded, v: list = variants) -> None:
            encode_without_one(explainer, e, v, CPU)
            for member in others:
                encode_sessions(member, e, CPU)

        cost.append(best_ms(member_0_explains))
    print("  member 0 explains, last 50 events: " + " / ".join(f"{c:.1f}" for c in cost))

    rng = random.Random(0)
    same = compared = wins = judged = 0
    all_vectors = rec.item_vectors
    explainer_vectors = explainer.item_vectors().detach().numpy()
    for start in range(0, len(histories), 64):
        encoded, variants = inputs(rec, histories[start : start + 64], types[start : start + 64], 50)
        full, without = encode_without_one(ensemble, encoded, variants, CPU)
        full_0, without_0 = encode_without_one(explainer, encoded, variants, CPU)
        by_source: dict[int, list[int]] = {}
        for n, (source, _) in enumerate(variants):
            by_source.setdefault(source, []).append(n)
        top = rec.search(full, args.k)
        for source, rows in by_source.items():
            if len(rows) < 2 or not top[source]:
                continue
            columns = np.array([rec.vocab.get(item) for item, _ in top[source]])
            drops = full[[source]].scores(all_vectors, columns) - without[rows].scores(all_vectors, columns)
            drops_0 = full_0[[source]].scores(explainer_vectors, columns) - without_0[rows].scores(
                explainer_vectors, columns
            )
            same += int((drops.argmax(0) == drops_0.argmax(0)).sum())
            compared += len(columns)
            strongest = int(drops_0[:, 0].argmax())
            other = rng.choice([v for v in range(len(rows)) if v != strongest])
            wins += bool(drops[strongest, 0] > drops[other, 0])
            judged += 1
    print(
        f"member 0's strongest driver is the ensemble's for {same / compared:.3f} of {compared} top-{args.k} "
        f"items; it beats a random other event by the ensemble's drops in {wins / judged:.3f} of {judged} "
        "cases"
    )


if __name__ == "__main__":
    main()
