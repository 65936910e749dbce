"""Basket completion: give one item of a held-out basket, score the others among the top k.

Held-out baskets are a later period than the fitted ones: the test weeks, a validation window, or each
month of a rolling-origin evaluation (`monthly_folds`: fit on everything before the month, test on it),
which shows whether a method's lead holds across seasons rather than on one split.

For each held-out basket with two or more distinct products, the anchor is its first line (deterministic)
and the targets are the other products. Recall@k is the share of targets among `complete([anchor], k)`,
capped at k (found / min(targets, k): a 30-product basket can be fully served by 10 suggestions), Hit@k
whether any target is there, both averaged over baskets. These are #24's definitions, under which the
later invoices this project never sees were scored. The baselines run in the same loop:
popularity and raw co-purchase counts ("frequently bought together").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from model.complement.model import incidence
from model.data import basket_customers_of, baskets_of, catalog_of
from model.vocab import ItemVocab


class Completer(Protocol):
    def complete(self, items: Sequence[str], k: int = 10) -> list[tuple[str, float]]: ...


class PopularityCompleter:
    """The best sellers, whatever the anchor."""

    def __init__(self, baskets: Sequence[Sequence[str]]) -> None:
        self.vocab = ItemVocab.from_sequences(baskets)
        self.counts = np.asarray(incidence(baskets, self.vocab).sum(axis=0)).ravel()

    def complete(self, items: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        return _top(self.counts.astype(np.float64), self.vocab, items, k)


class CoPurchaseCompleter:
    """Frequently bought together: raw co-purchase counts with the anchors, best sellers breaking ties."""

    def __init__(self, baskets: Sequence[Sequence[str]]) -> None:
        self.vocab = ItemVocab.from_sequences(baskets)
        matrix = incidence(baskets, self.vocab)
        self.counts = np.asarray(matrix.sum(axis=0)).ravel()
        self.pairs: sp.csr_matrix = (matrix.T @ matrix).tocsr()

    def complete(self, items: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        anchors = self.vocab.encode(items)
        together = np.asarray(self.pairs[anchors].sum(axis=0)).ravel() if anchors else 0.0
        scores = together + self.counts / (self.counts.sum() + 1.0)
        return _top(scores, self.vocab, items, k)


def _top(scores: np.ndarray, vocab: ItemVocab, exclude: Sequence[str], k: int) -> list[tuple[str, float]]:
    scores = scores.copy()
    scores[vocab.encode(exclude)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [(vocab.item_ids[i], float(scores[i])) for i in top if np.isfinite(scores[i])]


@dataclass(frozen=True)
class CompletionResult:
    recall: float
    hit: float
    baskets: int


def completion_cases(baskets: Sequence[Sequence[str]]) -> list[tuple[str, tuple[str, ...]]]:
    """(anchor = first line, the other distinct products) for every basket of two or more products."""
    cases = []
    for basket in baskets:
        items = tuple(dict.fromkeys(basket))
        if len(items) >= 2:
            cases.append((items[0], items[1:]))
    return cases


def evaluate_completion(
    completer: Completer, cases: Sequence[tuple[str, Sequence[str]]], k: int = 10, desc: str = "complete"
) -> CompletionResult:
    recalls, hits = [], []
    for anchor, targets in tqdm(cases, desc=desc, unit="basket", disable=None, leave=False):
        predicted = {item for item, _ in completer.complete([anchor], k=k)}
        found = sum(target in predicted for target in targets)
        recalls.append(found / min(len(targets), k))
        hits.append(found > 0)
    return CompletionResult(float(np.mean(recalls)), float(np.mean(hits)), len(cases))


@dataclass(frozen=True)
class Fold:
    """One rolling-origin fold: everything before `month` to fit on, that month's baskets to complete."""

    month: str  # YYYY-MM
    fit_baskets: list[tuple[str, ...]]
    fit_customers: list[str | None]
    catalog: pd.DataFrame  # items described in the fit period only: no later product is known yet
    test_baskets: list[tuple[str, ...]]


def monthly_folds(lines: pd.DataFrame, first_month: str = "2011-02") -> list[Fold]:
    """One fold per calendar month from `first_month` on: fit on every invoice before the month, test on
    the month's (`lines` as `model.data.read_online_retail` gives them: returns, cancellations, zero
    prices and non-product codes already removed)."""
    months = lines["ts"].dt.to_period("M")
    folds = []
    for month in sorted(months[months >= pd.Period(first_month, "M")].unique()):
        before, during = lines[months < month], lines[months == month]
        folds.append(
            Fold(
                str(month),
                baskets_of(before),
                basket_customers_of(before),
                catalog_of(before),
                baskets_of(during),
            )
        )
    return folds
