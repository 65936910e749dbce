"""Time-decayed item popularity, kept fresh from the stream itself for cold users.

Forward decay (Cormode et al., 2009): an event at time t adds w * 2^((t - t0) / half_life) to its item,
so older counts never need rewriting; scores are rescaled when the exponent grows large. Comparing
scores at any one moment is then the same as comparing exponentially decayed counts.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Container

# Stronger intent counts more; a removal from the cart is no vote for the item.
TYPE_WEIGHTS: dict[str, float] = {"view": 1.0, "add_to_cart": 2.0, "remove_from_cart": 0.0, "purchase": 3.0}
_RESCALE_AT = 2.0**60


class DecayedPopularity:
    """Exponentially decayed event counts per item, with a bounded number of tracked items."""

    def __init__(self, half_life_s: float, max_items: int = 200_000) -> None:
        self.half_life_s = half_life_s
        self.max_items = max_items
        self._origin: float | None = None
        self._scores: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._scores)

    def add(self, item_id: str, event_type: str, now: float) -> None:
        weight = TYPE_WEIGHTS.get(event_type, 0.0)
        if weight == 0.0:
            return
        if self._origin is None:
            self._origin = now
        growth = 2.0 ** ((now - self._origin) / self.half_life_s)
        if growth > _RESCALE_AT:
            self._rescale(now)
            growth = 1.0
        self._scores[item_id] = self._scores.get(item_id, 0.0) + weight * growth
        if len(self._scores) > 2 * self.max_items:
            self._scores = dict(heapq.nlargest(self.max_items, self._scores.items(), key=lambda kv: kv[1]))

    def _rescale(self, now: float) -> None:
        assert self._origin is not None
        factor = 2.0 ** (-(now - self._origin) / self.half_life_s)
        self._scores = {
            item: score * factor for item, score in self._scores.items() if score * factor > 1e-12
        }
        self._origin = now

    def top(self, n: int, now: float, allowed: Container[str] | None = None) -> list[tuple[str, float]]:
        """The n most popular items (only `allowed` ones when given), as decayed counts at `now`."""
        if self._origin is None:
            return []
        scale = 2.0 ** (-(now - self._origin) / self.half_life_s)
        candidates = self._scores.items()
        if allowed is not None:
            candidates = ((item, s) for item, s in candidates if item in allowed)  # type: ignore[assignment]
        best = heapq.nlargest(n, candidates, key=lambda kv: kv[1])
        return [(item, score * scale) for item, score in best if math.isfinite(score * scale)]
