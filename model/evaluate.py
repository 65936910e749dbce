"""Method-agnostic full-ranking evaluation: fit each scorer, score every case over the whole catalogue.

Every method, the attention model and the baselines alike, implements `Scorer`, so they are compared on
exactly the same cases, ranking rule (pessimistic ties, see `model.metrics`) and catalogue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import psutil
from rich.table import Table
from tqdm import tqdm

from model.baselines import encode_sessions, item_counts
from model.data import Case, Session
from model.metrics import UNKNOWN_TARGET, RankingAccumulator
from model.vocab import ItemVocab

REPORTED_METRICS: tuple[str, ...] = ("HR@10", "HR@20", "NDCG@10", "MRR@20", "coverage@20", "novelty@20")


class Scorer(Protocol):
    """A next-item method: learns from training sessions, then scores every vocabulary item per case."""

    name: str

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None: ...

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        """A new float32 (len(cases), len(vocab)) array (`evaluate` masks it in place); higher is better;
        every item of the vocabulary is ranked."""
        ...


@dataclass
class Prefitted:
    """An already-trained scorer: `evaluate` does not fit it and reports the training cost given here."""

    scorer: Scorer
    fit_seconds: float | None = None
    fit_peak_rss_mib: float | None = None

    @property
    def name(self) -> str:
        return self.scorer.name

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        """Nothing to do: the wrapped scorer was trained elsewhere."""

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        return self.scorer.score(cases)


@dataclass
class MethodResult:
    """One method's metrics on one case set, with what fitting and scoring cost.

    `fit_peak_rss_mib` is the peak resident memory of the whole process while fitting and
    `fit_rss_growth_mib` its rise above the level before fitting (the method's own share).
    """

    name: str
    metrics: dict[str, float]
    n_cases: int
    n_unknown_targets: int
    fit_seconds: float | None
    fit_peak_rss_mib: float | None
    fit_rss_growth_mib: float | None
    score_seconds: float


class _PeakRss:
    """Samples this process's resident memory in a background thread and keeps the peak."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._process = psutil.Process()
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start_bytes = self.peak_bytes = self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


def target_indices(cases: Sequence[Case], vocab: ItemVocab) -> np.ndarray:
    """Vocabulary index of each case's target, `UNKNOWN_TARGET` where the vocabulary lacks it."""
    return np.fromiter(
        (UNKNOWN_TARGET if (index := vocab.get(case.target)) is None else index for case in cases),
        dtype=np.int64,
        count=len(cases),
    )


def purchased_entries(cases: Sequence[Case], vocab: ItemVocab) -> tuple[np.ndarray, np.ndarray]:
    """(case row, vocabulary index) of every known item each case's prefix purchased."""
    pairs = [
        (row, index)
        for row, case in enumerate(cases)
        for item, kind in zip(case.prefix, case.prefix_types, strict=True)
        if kind == "purchase" and (index := vocab.get(item)) is not None
    ]
    rows, columns = zip(*pairs, strict=True) if pairs else ((), ())
    return np.array(rows, dtype=np.int64), np.array(columns, dtype=np.int64)


def evaluate(
    scorers: Sequence[Scorer],
    train: Sequence[Session],
    cases: Sequence[Case],
    vocab: ItemVocab,
    ks: Sequence[int] = (10, 20),
    batch_size: int = 512,
    progress: bool = True,
) -> list[MethodResult]:
    """Fit each scorer on `train` (unless wrapped in `Prefitted`) and rank every case's target.

    A case whose target is not in `vocab` cannot be recommended and counts as a miss at every K; the
    number of such cases is reported as `n_unknown_targets`. Novelty uses item shares in `train`. Every
    method's ranking leaves out what the case's user bought (its prefix's purchases), as the stream's
    answers do (they never offer a user what they bought): a ranked slot the product would never show
    measures nothing.
    """
    if not cases:
        raise ValueError("no cases to evaluate")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    targets = target_indices(cases, vocab)
    counts = item_counts(encode_sessions([s.items for s in train], vocab), len(vocab))
    batches = range(0, len(cases), batch_size)
    bought = {start: purchased_entries(cases[start : start + batch_size], vocab) for start in batches}
    results = []
    for scorer in scorers:
        fit_seconds, peak_mib, growth_mib = _fit(scorer, train, vocab)
        accumulator = RankingAccumulator(counts, ks)
        started = time.perf_counter()
        for start in tqdm(batches, desc=f"scoring {scorer.name}", unit="batch", disable=not progress):
            batch = cases[start : start + batch_size]
            scores = scorer.score(batch)
            _check_scores(scorer.name, scores, len(batch), len(vocab))
            scores[bought[start]] = -np.inf
            accumulator.update(scores, targets[start : start + batch_size])
        results.append(
            MethodResult(
                name=scorer.name,
                metrics=accumulator.result(),
                n_cases=len(cases),
                n_unknown_targets=int((targets == UNKNOWN_TARGET).sum()),
                fit_seconds=fit_seconds,
                fit_peak_rss_mib=peak_mib,
                fit_rss_growth_mib=growth_mib,
                score_seconds=time.perf_counter() - started,
            )
        )
    return results


def _fit(
    scorer: Scorer, train: Sequence[Session], vocab: ItemVocab
) -> tuple[float | None, float | None, float | None]:
    """(fit seconds, peak RSS MiB, RSS growth MiB); a `Prefitted` scorer reports its recorded cost."""
    if isinstance(scorer, Prefitted):
        return scorer.fit_seconds, scorer.fit_peak_rss_mib, None
    started = time.perf_counter()
    with _PeakRss() as rss:
        scorer.fit(train, vocab)
    mib = 2.0**20
    return time.perf_counter() - started, rss.peak_bytes / mib, (rss.peak_bytes - rss.start_bytes) / mib


def _check_scores(name: str, scores: np.ndarray, n_cases: int, n_items: int) -> None:
    if not isinstance(scores, np.ndarray) or scores.shape != (n_cases, n_items):
        shape = getattr(scores, "shape", type(scores).__name__)
        raise ValueError(f"{name}.score returned {shape}, expected an array of shape ({n_cases}, {n_items})")
    if np.isnan(scores).any():
        raise ValueError(f"{name}.score returned NaN scores")


def _format_optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(results: Sequence[MethodResult], metrics: Sequence[str] = REPORTED_METRICS) -> Table:
    """A rich table: one row per method, the chosen metrics, then fit time, fit memory and scoring time."""
    n_cases = results[0].n_cases if results else 0
    table = Table(title=f"Full-ranking next-item evaluation ({n_cases} cases)")
    table.add_column("method")
    for metric in metrics:
        table.add_column(metric, justify="right")
    for column in ("fit s", "fit peak MiB", "score s"):
        table.add_column(column, justify="right")
    for result in results:
        table.add_row(
            result.name,
            *(_format_optional(result.metrics.get(metric), ".4f") for metric in metrics),
            _format_optional(result.fit_seconds, ".1f"),
            _format_optional(result.fit_peak_rss_mib, ".0f"),
            f"{result.score_seconds:.1f}",
        )
    return table


def results_to_json(results: Sequence[MethodResult]) -> dict[str, Any]:
    """JSON-ready summary: {"methods": [each MethodResult as a dict]}."""
    return {"methods": [asdict(result) for result in results]}
