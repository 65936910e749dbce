"""Strong non-neural next-item baselines, each a `Scorer` over the whole catalogue.

Session-based heuristics are hard to beat (Ludewig & Jannach, 2018), and on view data about a third of
next items were already seen in the session, so both neighbourhood baselines add a recency-weighted
repeat score to their transition or neighbour score. Defaults were tuned on a validation split cut from
the end of the RetailRocket training sessions (never on the test cases); see BENCHMARKS.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from model.data import Case, Session
from model.vocab import ItemVocab

TIE_BREAK_WEIGHT = 1e-3
"""Weight of normalised popularity in heuristic scores: it orders the items a heuristic cannot tell apart."""

PositionWeights = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""(steps from the session end, session length) per click -> the click's weight."""


def encode_sessions(sessions: Sequence[Sequence[str]], vocab: ItemVocab) -> list[np.ndarray]:
    """Item-index arrays; items outside the vocabulary are dropped."""
    return [np.asarray(vocab.encode(items), dtype=np.int64) for items in sessions]


def item_counts(sessions: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Interactions per item index."""
    flat = np.concatenate(sessions) if sessions else np.zeros(0, dtype=np.int64)
    return np.bincount(flat, minlength=n_items)


def session_matrix(sessions: Sequence[np.ndarray], n_items: int, weights: PositionWeights) -> sp.csr_matrix:
    """(sessions, items) sparse matrix of summed click weights, one row per session."""
    lengths = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
    rows = np.repeat(np.arange(len(sessions)), lengths)
    flat = np.concatenate(sessions) if len(rows) else np.zeros(0, dtype=np.int64)
    position = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    steps_from_end = lengths[rows] - 1 - position
    values = weights(steps_from_end, lengths[rows]).astype(np.float32)
    matrix = sp.csr_matrix((values, (rows, flat)), shape=(len(sessions), n_items))
    matrix.sum_duplicates()
    return matrix


def _normalise_rows(scores: np.ndarray) -> np.ndarray:
    """Divide each row by its maximum in place (rows of zeros stay zero), so components share one scale."""
    peak = scores.max(axis=1, keepdims=True)
    np.divide(scores, peak, out=scores, where=peak > 0)
    return scores


def _normalised_popularity(counts: np.ndarray) -> np.ndarray:
    return (counts / max(int(counts.max(initial=0)), 1)).astype(np.float32)


class Popularity:
    """Most-interacted training items first, the same list for every case."""

    name = "Popularity"

    def __init__(self) -> None:
        self._popularity: np.ndarray | None = None

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        counts = item_counts(encode_sessions([s.items for s in train], vocab), len(vocab))
        self._popularity = _normalised_popularity(counts)

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        if self._popularity is None:
            raise RuntimeError(f"fit {self.name} before scoring")
        return np.tile(self._popularity, (len(cases), 1))


class _RepeatAware(ABC):
    """A method's own item scores plus a recency-weighted repeat score and a popularity tie-break.

    score = own / max(own) + repeat_weight * repeat / max(repeat) + TIE_BREAK_WEIGHT * popularity, with
    repeat(i) = sum of repeat_decay ** (steps from the end) over the session's clicks on item i: the last
    item is strongest, and items clicked often score more. Subclasses add `_fit_sessions` and `_own_scores`.
    """

    name: str

    def __init__(self, repeat_weight: float, repeat_decay: float) -> None:
        if repeat_weight < 0 or not 0 < repeat_decay <= 1:
            raise ValueError("repeat_weight must be >= 0 and repeat_decay in (0, 1]")
        self.repeat_weight = repeat_weight
        self.repeat_decay = repeat_decay
        self._vocab: ItemVocab | None = None
        self._popularity = np.zeros(0, dtype=np.float32)

    @property
    def n_items(self) -> int:
        return len(self._popularity)

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        sessions = encode_sessions([s.items for s in train], vocab)
        self._vocab = vocab
        self._popularity = _normalised_popularity(item_counts(sessions, len(vocab)))
        self._fit_sessions(sessions)

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        if self._vocab is None:
            raise RuntimeError(f"fit {self.name} before scoring")
        prefixes = encode_sessions([case.prefix for case in cases], self._vocab)
        scores = _normalise_rows(self._own_scores(prefixes))
        if self.repeat_weight > 0:
            repeats = session_matrix(prefixes, self.n_items, lambda steps, _: self.repeat_decay**steps)
            scores += self.repeat_weight * _normalise_rows(repeats.toarray())
        scores += TIE_BREAK_WEIGHT * self._popularity
        return scores

    @abstractmethod
    def _fit_sessions(self, sessions: list[np.ndarray]) -> None:
        """Learn from the training sessions, encoded as item-index arrays."""

    @abstractmethod
    def _own_scores(self, prefixes: list[np.ndarray]) -> np.ndarray:
        """Dense float32 (cases, n_items) scores of the method itself, any non-negative scale."""


class SequentialRules(_RepeatAware):
    """Sequential rules (Ludewig & Jannach, 2018) over the last few session items, plus repeats.

    A rule a -> b is credited 1 / distance each time b follows a within `window` clicks in a training
    session. A session scores items by the rules of its last `last_items` clicks, the older ones weighted
    down by `last_decay` per step.
    """

    name = "SequentialRules"

    def __init__(
        self,
        window: int = 10,
        last_items: int = 10,
        last_decay: float = 0.6,
        repeat_weight: float = 2.0,
        repeat_decay: float = 0.85,
    ) -> None:
        super().__init__(repeat_weight, repeat_decay)
        if window < 1 or last_items < 1 or not 0 < last_decay <= 1:
            raise ValueError("window and last_items must be >= 1 and last_decay in (0, 1]")
        self.window = window
        self.last_items = last_items
        self.last_decay = last_decay
        self._rules = sp.csr_matrix((0, 0), dtype=np.float32)

    def _fit_sessions(self, sessions: list[np.ndarray]) -> None:
        lengths = np.fromiter(map(len, sessions), dtype=np.int64, count=len(sessions))
        flat = np.concatenate(sessions) if lengths.sum() else np.zeros(0, dtype=np.int64)
        session_of = np.repeat(np.arange(len(sessions)), lengths)
        sources, targets, weights = [], [], []
        for distance in range(1, self.window + 1):
            same_session = session_of[distance:] == session_of[:-distance]
            sources.append(flat[:-distance][same_session])
            targets.append(flat[distance:][same_session])
            weights.append(np.full(int(same_session.sum()), 1.0 / distance, dtype=np.float32))
        self._rules = sp.csr_matrix(
            (np.concatenate(weights), (np.concatenate(sources), np.concatenate(targets))),
            shape=(self.n_items, self.n_items),
        )
        self._rules.sum_duplicates()

    def _own_scores(self, prefixes: list[np.ndarray]) -> np.ndarray:
        recent = session_matrix(
            prefixes,
            self.n_items,
            lambda steps, _: np.where(steps < self.last_items, self.last_decay**steps, 0.0),
        )
        return (recent @ self._rules).toarray()


class SessionKNN(_RepeatAware):
    """V-SKNN (Ludewig & Jannach, 2018): items of the training sessions most similar to the current one.

    The current session is a vector whose click weights fall linearly from the last click (1) to the
    first (1 / length), optionally times the item's IDF; training sessions are item sets. Similarity is
    cosine. Of the training sessions sharing an item, the `sample_size` most recent (latest in the training
    order) are candidates and the `neighbours` most similar vote for their items with their similarity.
    """

    name = "SessionKNN"

    def __init__(
        self,
        neighbours: int = 200,
        sample_size: int | None = 1000,
        idf_weighting: bool = True,
        repeat_weight: float = 4.0,
        repeat_decay: float = 0.85,
    ) -> None:
        super().__init__(repeat_weight, repeat_decay)
        if neighbours < 1 or (sample_size is not None and sample_size < neighbours):
            raise ValueError("neighbours must be >= 1 and sample_size (if given) >= neighbours")
        self.neighbours = neighbours
        self.sample_size = sample_size
        self.idf_weighting = idf_weighting
        self._sessions = sp.csr_matrix((0, 0), dtype=np.float32)
        self._sessions_of_item = sp.csr_matrix((0, 0), dtype=np.float32)
        self._inverse_norm = np.zeros(0, dtype=np.float32)
        self._idf = np.zeros(0, dtype=np.float32)

    def _fit_sessions(self, sessions: list[np.ndarray]) -> None:
        item_sets = session_matrix(sessions, self.n_items, lambda steps, _: np.ones(len(steps)))
        item_sets.data[:] = 1.0
        self._sessions = item_sets
        self._sessions_of_item = item_sets.T.tocsr()
        self._inverse_norm = (1.0 / np.sqrt(np.maximum(item_sets.getnnz(axis=1), 1))).astype(np.float32)
        document_frequency = np.maximum(self._sessions_of_item.getnnz(axis=1), 1)
        self._idf = np.log(len(sessions) / document_frequency).astype(np.float32)

    def _own_scores(self, prefixes: list[np.ndarray]) -> np.ndarray:
        current = session_matrix(prefixes, self.n_items, lambda steps, length: (length - steps) / length)
        if self.idf_weighting:
            current = current.multiply(self._idf[None, :]).tocsr()
        similarity = (current @ self._sessions_of_item).tocsr()
        similarity.data *= self._inverse_norm[similarity.indices]
        return (self._nearest(similarity) @ self._sessions).toarray()

    def _nearest(self, similarity: sp.csr_matrix) -> sp.csr_matrix:
        """Keep per row the `neighbours` most similar of the `sample_size` most recent candidate sessions."""
        rows, columns, values = [], [], []
        for row in range(similarity.shape[0]):
            start, end = similarity.indptr[row], similarity.indptr[row + 1]
            sessions, scores = similarity.indices[start:end], similarity.data[start:end]
            if self.sample_size is not None and len(sessions) > self.sample_size:
                recent = np.argpartition(sessions, len(sessions) - self.sample_size)[-self.sample_size :]
                sessions, scores = sessions[recent], scores[recent]
            if len(sessions) > self.neighbours:
                best = np.argpartition(scores, len(scores) - self.neighbours)[-self.neighbours :]
                sessions, scores = sessions[best], scores[best]
            rows.append(np.full(len(sessions), row))
            columns.append(sessions)
            values.append(scores)
        if not rows:
            return sp.csr_matrix(similarity.shape, dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=similarity.shape
        )
