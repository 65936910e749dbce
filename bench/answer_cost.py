"""What one call of the answer seam costs with a given model: `Recommender.answer_batch` on batches of 1, 4,
16 and 64 users (the bundled sample's users, each with their last 50 events), with the seam's own stage
split (model / faiss / bundles). One thread, best of `--repeat` calls after two warm-up calls.

    python bench/answer_cost.py --model ARTIFACT_ROOT
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from model import Recommender
from model.answers import Query
from stream.launch import ONLINE_RETAIL_SAMPLE
from stream.replay import load_events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="artifact root")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recommender = Recommender.load(args.model)
    recommender.warm_up()
    events = load_events(ONLINE_RETAIL_SAMPLE)
    histories: dict[str, list[str]] = {}
    for user, item in zip(events["user_id"].astype(str), events["item_id"].astype(str), strict=True):
        histories.setdefault(user, []).append(item)
    queries = [Query(history[-50:]) for history in histories.values()]
    for size in (1, 4, 16, 64):
        batch = queries[:size]
        for _ in range(2):
            recommender.answer_batch(batch)
        best: dict[str, float] | None = None
        for _ in range(args.repeat):
            spent: dict[str, float] = defaultdict(float)

            @contextmanager
            def timed(stage: str, spent: dict[str, float] = spent) -> Iterator[None]:
                started = time.perf_counter()
                yield
                spent[stage] += time.perf_counter() - started

            started = time.perf_counter()
            recommender.answer_batch(batch, stage=timed)
            spent["call"] = time.perf_counter() - started
            if best is None or spent["call"] < best["call"]:
                best = dict(spent)
        assert best is not None
        stages = " / ".join(f"{best[stage] * 1e3:.1f}" for stage in ("model", "faiss", "bundles"))
        call_ms = best["call"] * 1e3
        print(f"{size:>3} users: {call_ms:.1f} ms per call, {call_ms / size:.2f} ms per user; ", end="")
        print(f"model / faiss / bundles {stages} ms")


if __name__ == "__main__":
    main()
