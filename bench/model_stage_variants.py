"""Two ways to cut the serving forward of the shipped two-member model, measured before changing it:

- a shorter history window: the forward of each user's last 50 / 30 / 20 events with their leave-one-out
  variants (the shipped weights on shorter inputs: the cost a model trained on that window would have);
- explanations from member 0 alone: member 0 encodes the histories with their variants, the other member
  encodes the histories alone (retrieval still needs both), against both members encoding both.

For the second, explanations would then follow member 0's score drops instead of the ensemble's. On
online-retail test histories it prints how often member 0 names the same strongest driver as the ensemble for
each of the top `--k` items, and how often the event it names lowers the ensemble's score of the top item
more than a random other attributed event (the faithfulness check's bar, judged by the ensemble's own
leave-one-out). Every forward is the serving one (`Recommender.attribute`, `Recommender.encode`), run by a
copy of the recommender that holds one member. One thread, best of 7 after two warm-up calls.

    python bench/model_stage_variants.py --model ARTIFACT_ROOT [--histories 600] [--k 5]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model import Recommender
from model.data import load_dataset
from model.sasrec.model import SASRec


def best_ms(call: Callable[[], object]) -> float:
    call(), call()
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def serving_member(rec: Recommender, member: SASRec) -> Recommender:
    """`rec` with one member as its model and that member's item rows: its forwards and score drops are the
    member's alone (its FAISS index stays the ensemble's, and is not used here)."""
    alone = copy.copy(rec)
    alone.model = member
    alone.item_vectors = member.item_vectors().detach().cpu().numpy()
    return alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root (a 2-member model)")
    parser.add_argument("--histories", type=int, default=600, help="distinct online-retail test histories")
    parser.add_argument("--k", type=int, default=5, help="top items whose strongest drivers are compared")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rec = Recommender.load(args.model)
    if not hasattr(rec.model, "members"):
        raise SystemExit("the model has one member: nothing to compare")
    explainer, *others = (serving_member(rec, member) for member in rec.model.members)
    # A test case per target product: one customer's history recurs, so each distinct history counts once.
    cases = load_dataset("online-retail", holdout_validation=False).test
    distinct = {(c.prefix, c.prefix_types): None for c in cases}
    chosen = list(distinct)[: args.histories]
    histories, types = [list(h) for h, _ in chosen], [list(t) for _, t in chosen]

    print("model stage ms for 1 / 4 / 16 / 64 users")
    for window in (50, 30, 20):
        cost = []
        for users in (1, 4, 16, 64):
            shorter = [h[-window:] for h in histories[:users]], [t[-window:] for t in types[:users]]
            cost.append(best_ms(lambda h=shorter: rec.attribute(*h)))
        print(f"  both members explain, last {window} events: " + " / ".join(f"{c:.1f}" for c in cost))
    cost = []
    for users in (1, 4, 16, 64):
        batch = histories[:users], types[:users]

        def member_0_explains(h: tuple = batch) -> None:
            explainer.attribute(*h)
            for member in others:
                member.encode(*h)

        cost.append(best_ms(member_0_explains))
    print("  member 0 explains, last 50 events: " + " / ".join(f"{c:.1f}" for c in cost))

    rng = random.Random(0)
    same = compared = wins = judged = 0
    for start in range(0, len(histories), 64):
        batch = histories[start : start + 64], types[start : start + 64]
        by_both, by_member_0 = rec.attribute(*batch), explainer.attribute(*batch)
        for row, ranked in enumerate(rec.recommend_batch(*batch, k=args.k)):
            items = [item for item, _ in ranked if item in rec.vocab]
            if len(by_both.variants.positions[row]) < 2 or not items:
                continue
            drops, drops_0 = by_both.drops(rec, row, items), by_member_0.drops(explainer, row, items)
            same += int((drops.argmax(0) == drops_0.argmax(0)).sum())
            compared += len(items)
            strongest = int(drops_0[:, 0].argmax())
            other = rng.choice([v for v in range(len(drops)) if v != strongest])
            wins += bool(drops[strongest, 0] > drops[other, 0])
            judged += 1
    print(
        f"member 0's strongest driver is the ensemble's for {same / compared:.3f} of {compared} top-{args.k} "
        f"items; it beats a random other event by the ensemble's drops in {wins / judged:.3f} of {judged} "
        "cases"
    )


if __name__ == "__main__":
    main()
