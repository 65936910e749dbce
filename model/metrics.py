"""Full-ranking next-item metrics, computed from score matrices over the whole catalogue.

Ranks are pessimistic about ties: a target shares its rank with every item that scores the same, counted
as if all of them came first. A method that gives every item the same score therefore ranks every target
last, so no method can win by ties. `RankingAccumulator` streams over batches of cases, so an evaluation
never holds the full (cases x items) score matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

UNKNOWN_TARGET = -1
"""Target index of a case whose target item is outside the vocabulary: it is a miss at every K."""

UNRANKED = np.iinfo(np.int64).max
"""Rank of an unknown target: beyond every cut-off, even one longer than the catalogue."""


def _targets(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After checking `targets`: which are known, each row's target column (0 for an unknown one) and the
    score there (a copy)."""
    n_cases, n_items = scores.shape
    targets = np.asarray(targets, dtype=np.int64)
    if targets.shape != (n_cases,):
        raise ValueError(f"expected {n_cases} targets, got shape {targets.shape}")
    if np.any((targets < UNKNOWN_TARGET) | (targets >= n_items)):
        raise ValueError(f"target indices must lie in [0, {n_items}) or be {UNKNOWN_TARGET}")
    known = targets != UNKNOWN_TARGET
    columns = np.where(known, targets, 0)
    return known, columns, scores[np.arange(n_cases), columns]


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target: 1 + items scoring strictly higher + other items scoring equal.

    `targets` holds item indices, `UNKNOWN_TARGET` for a target outside the vocabulary (rank `UNRANKED`).
    """
    known, _, target_scores = _targets(scores, targets)
    # Counting ">=" includes the target itself: 1 + strictly higher + other equal items.
    ranks = np.count_nonzero(scores >= target_scores[:, None], axis=1)
    ranks[~known] = UNRANKED
    return ranks


def boosted_target_ranks(
    scores: np.ndarray, rows: np.ndarray, columns: np.ndarray, boosts: np.ndarray, targets: np.ndarray
) -> np.ndarray:
    """`target_ranks` of `scores` with `boosts` added at (rows, columns) (distinct pairs), without copying
    `scores`: one comparison pass as usual, then only the boosted entries are counted again.

    Validation ranks the same scores at many repeat-bonus weights, which move only a few entries per case.
    Boosts are added in the dtype of `scores`, as they would be to the score matrix itself.
    """
    known, target_columns, target_scores = _targets(scores, targets)
    plain = scores[rows, columns]
    boosted = plain + boosts.astype(scores.dtype)
    on_target = columns == target_columns[rows]
    target_scores[rows[on_target]] = boosted[on_target]
    ranks = np.count_nonzero(scores >= target_scores[:, None], axis=1)
    threshold = target_scores[rows]
    recount = (boosted >= threshold).astype(np.int64) - (plain >= threshold)
    ranks += np.bincount(rows, weights=recount, minlength=len(scores)).astype(np.int64)
    ranks[~known] = UNRANKED
    return ranks


def top_k_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k best items, best first (ties in any order)."""
    k = min(k, scores.shape[1])
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, candidates, axis=1), axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def self_information(item_counts: np.ndarray) -> np.ndarray:
    """-log2 of each item's share of the training interactions.

    An item never seen in training counts as seen once, so that recommending it is very novel but finite.
    """
    counts = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)
    return -np.log2(counts / counts.sum())


class RankingAccumulator:
    """Streams HR@K, NDCG@K, MRR@K, catalogue coverage@K and novelty@K over batches of scored cases."""

    def __init__(self, item_counts: np.ndarray, ks: Sequence[int]) -> None:
        if not ks or min(ks) < 1:
            raise ValueError("ks must be a non-empty sequence of positive cut-offs")
        self.ks = tuple(sorted(set(ks)))
        self.n_items = len(item_counts)
        self._information = self_information(item_counts)
        self.n_cases = 0
        self._hits = dict.fromkeys(self.ks, 0.0)
        self._ndcg = dict.fromkeys(self.ks, 0.0)
        self._reciprocal_rank = dict.fromkeys(self.ks, 0.0)
        self._information_sum = dict.fromkeys(self.ks, 0.0)
        self._recommended = {k: np.zeros(self.n_items, dtype=bool) for k in self.ks}

    def update(self, scores: np.ndarray, targets: np.ndarray) -> None:
        """Add a batch: `scores` is (cases, n_items), higher is better; `targets` are item indices."""
        if scores.ndim != 2 or scores.shape[1] != self.n_items:
            raise ValueError(f"scores must have shape (cases, {self.n_items}), got {scores.shape}")
        ranks = target_ranks(scores, targets)
        top = top_k_items(scores, max(self.ks))
        self.n_cases += len(ranks)
        for k in self.ks:
            hit = ranks <= k
            self._hits[k] += float(hit.sum())
            self._ndcg[k] += float((1.0 / np.log2(ranks[hit] + 1.0)).sum())
            self._reciprocal_rank[k] += float((1.0 / ranks[hit]).sum())
            top_k = top[:, :k]
            self._recommended[k][top_k.ravel()] = True
            self._information_sum[k] += float(self._information[top_k].mean(axis=1).sum())

    def result(self) -> dict[str, float]:
        """Metric name (e.g. "HR@20") -> value; averages over the cases seen so far."""
        if self.n_cases == 0:
            raise ValueError("no cases were added")
        metrics: dict[str, float] = {}
        for k in self.ks:
            metrics[f"HR@{k}"] = self._hits[k] / self.n_cases
            metrics[f"NDCG@{k}"] = self._ndcg[k] / self.n_cases
            metrics[f"MRR@{k}"] = self._reciprocal_rank[k] / self.n_cases
            metrics[f"coverage@{k}"] = float(self._recommended[k].mean())
            metrics[f"novelty@{k}"] = self._information_sum[k] / self.n_cases
        return metrics
