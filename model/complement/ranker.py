"""A learned ranker over complement candidates: LightGBM, trained on what the shop's later baskets held.

The hand-set complement model (`ComplementModel.fit`) mixes its signals with fixed knobs, and knobs tuned on
one season do not carry to the next. Here gradient-boosted trees learn the mix from what customers did next:

1. Origins. The fitted baskets (in time order) are cut into their last `label_windows` windows of `window`
   baskets. For each window every signal is computed from the baskets *before* it; the window's baskets
   are the labels (`training_set`): for an anchor a and candidate b, the share of a's basket-completion
   recall that b would earn. Trees fit it pointwise (cross-entropy, each anchor weighted by its baskets).
2. Candidates for an anchor: the union of its best `prior_candidates` under the hand-set model and its best
   `copurchase_candidates` by raw co-purchase count. The ranker only reorders; recall is bounded by these.
3. Features of a pair (`FEATURES`): co-purchase rate, confidence and lift, recent co-purchases, same-customer
   co-buys, description similarity, the hand-set score and both ranks, and b's popularity, trend, shelf age,
   time since its last sale and price ratio. Counts are rates over the history, so windows with shorter
   histories teach the same thresholds.
4. Serving. The ranker scores every item's candidates once, on signals from all the fitted baskets. Each
   row becomes a distribution (softmax), blended with the hand-set row (`prior_weight`), and replaces the
   hand-set scores: `ComplementModel.complete` and bundle assembly read it at the cost of a sparse row.

Each stored pair also keeps the signal that raised the ranker's score most (`pair_signals`), which bundle
explanations name. BENCHMARKS.md gives the measured reasons for these choices (pointwise rather than
LambdaMART, all lines as anchors, the blend).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from model.complement.model import (
    SIGNAL_NAMES,
    ComplementConfig,
    ComplementModel,
    conditional,
    customer_incidence,
    incidence,
    tfidf_rows,
)
from model.vocab import ItemVocab

if TYPE_CHECKING:  # imported where a ranker is trained: workers that only serve never load it
    import lightgbm as lgb

log = logging.getLogger(__name__)

FEATURES: tuple[str, ...] = (
    "prior_score",
    "prior_rank",
    "pair_baskets",
    "confidence",
    "lift",
    "copurchase_rank",
    "recent_pair_baskets",
    "customer_confidence",
    "description_similarity",
    "anchor_baskets",
    "candidate_baskets",
    "candidate_recent_share",
    "candidate_age",
    "candidate_idle",
    "price_ratio",
)

# Bundle assembly draws an anchor's members from its best 60 complements (model.bundles): only those pairs
# get a named signal, which saves four ranker passes over every other candidate.
NAMED_PER_ROW = 60

# What a bundle member's evidence names: the family of pair features whose removal lowers its score most
# (each feature set to its value for a pair without that evidence). A pair that none of them raises is
# there for the candidate's own traits: popularity, trend, price.
NO_EVIDENCE: dict[str, dict[str, float]] = {
    "co_purchase": {
        "pair_baskets": 0.0,
        "confidence": 0.0,
        "lift": 0.0,
        "copurchase_rank": 1e6,
        "recent_pair_baskets": 0.0,
    },
    "same_customers": {"customer_confidence": 0.0},
    "similar_description": {"description_similarity": 0.0},
    "complement_model": {"prior_score": 0.0, "prior_rank": 1e6},
}


@dataclass(frozen=True)
class RankerConfig:
    """Chosen on the February-April 2011 folds only (BENCHMARKS.md, basket completion)."""

    window: int = 300  # baskets per label window (about a week of this shop's invoices)
    label_windows: int = 12
    min_history: int = 1000  # a window needs at least this many earlier baskets to compute signals from
    prior_candidates: int = 200
    copurchase_candidates: int = 100
    recent: int = 1000  # baskets counted as "recent" by the trend features
    trees: int = 300
    learning_rate: float = 0.05
    leaves: int = 15
    min_child_samples: int = 1000
    seed: int = 0
    prior_weight: float = 0.5  # served score = (1 - w) * the ranker's row softmax + w * the hand-set row


@dataclass
class Signals:
    """Every per-pair and per-item signal, from baskets before an origin (rows of one vocabulary)."""

    prior_model: ComplementModel
    pairs: sp.csr_matrix
    recent_pairs: sp.csr_matrix
    customer_conditional: sp.csr_matrix
    tfidf: sp.csr_matrix
    counts: np.ndarray
    recent_counts: np.ndarray
    first_seen: np.ndarray  # baskets since the item was first bought (shelf age)
    last_seen: np.ndarray  # baskets since the item was last bought
    prices: np.ndarray
    n_baskets: int
    recent: int

    @property
    def vocab(self) -> ItemVocab:
        return self.prior_model.vocab

    @property
    def prior(self) -> sp.csr_matrix:
        """The hand-set model's scores: its candidates and features, and the served blend's other half."""
        return self.prior_model.scores

    @classmethod
    def compute(
        cls,
        baskets: Sequence[Sequence[str]],
        customers: Sequence[str | None] | None,
        catalog: pd.DataFrame | None,
        prior_config: ComplementConfig,
        recent: int,
    ) -> Signals:
        prior = ComplementModel.fit(baskets, catalog, config=prior_config, customers=customers)
        vocab = prior.vocab
        matrix = prior.baskets.tocsr()  # the basket x item incidence the hand-set model was fitted on
        recent_matrix = matrix[-recent:]
        pairs = (matrix.T @ matrix).tocsr()
        recent_pairs = (recent_matrix.T @ recent_matrix).tocsr()
        if customers:
            by_customer = customer_incidence(baskets, customers, vocab)
            customer_conditional = conditional(by_customer, np.ones(by_customer.shape[0]), 0.0).tocsr()
        else:
            customer_conditional = sp.csr_matrix((len(vocab), len(vocab)), dtype=np.float32)
        texts = [""] * len(vocab)
        prices = np.full(len(vocab), np.nan)
        if catalog is not None:
            described = catalog.set_index(catalog["item_id"].astype(str))
            texts = [str(described["description"].get(item, "") or "") for item in vocab.item_ids]
            if "price" in described:
                prices = described["price"].reindex(vocab.item_ids).to_numpy(dtype=np.float64)
        columns = prior.baskets
        bought_any = np.diff(columns.indptr) > 0
        first = np.zeros(len(vocab))
        last = np.zeros(len(vocab))
        for item in np.flatnonzero(bought_any):
            rows = columns.indices[columns.indptr[item] : columns.indptr[item + 1]]
            first[item], last[item] = rows.min(), rows.max()
        n = len(baskets)
        return cls(
            prior_model=prior,
            pairs=pairs,
            recent_pairs=recent_pairs,
            customer_conditional=customer_conditional,
            tfidf=tfidf_rows(texts),
            counts=np.asarray(matrix.sum(axis=0)).ravel(),
            recent_counts=np.asarray(recent_matrix.sum(axis=0)).ravel(),
            first_seen=np.where(bought_any, n - first, -1.0),
            last_seen=np.where(bought_any, n - 1 - last, -1.0),
            prices=prices,
            n_baskets=n,
            recent=min(recent, n),
        )

    def candidates(self, anchors: np.ndarray, config: RankerConfig) -> tuple[np.ndarray, np.ndarray]:
        """(anchor row, candidate row) pairs: each anchor's best by the prior and by co-purchase count."""
        anchor_column, candidate_column = [], []
        for anchor in anchors:
            chosen = np.union1d(
                _best(self.prior, anchor, config.prior_candidates),
                _best(self.pairs, anchor, config.copurchase_candidates, exclude=anchor),
            )
            anchor_column.append(np.full(len(chosen), anchor))
            candidate_column.append(chosen.astype(np.int64))
        if not anchor_column:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(anchor_column).astype(np.int64), np.concatenate(candidate_column)

    def features(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """One row of `FEATURES` per (a, b) pair."""
        together = _pick(self.pairs, a, b)
        counts_a, counts_b = self.counts[a], self.counts[b]
        similarity = np.asarray(self.tfidf[a].multiply(self.tfidf[b]).sum(axis=1)).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            price_ratio = np.log(self.prices[b] / self.prices[a])
        columns = {
            "prior_score": _pick(self.prior, a, b),
            "prior_rank": _row_rank(self.prior, a, b),
            "pair_baskets": together / self.n_baskets,
            "confidence": together / np.maximum(counts_a, 1.0),
            "lift": together * self.n_baskets / np.maximum(counts_a * counts_b, 1.0),
            "copurchase_rank": _row_rank(self.pairs, a, b),
            "recent_pair_baskets": _pick(self.recent_pairs, a, b) / self.recent,
            "customer_confidence": _pick(self.customer_conditional, a, b),
            "description_similarity": similarity,
            "anchor_baskets": np.log((counts_a + 1.0) / self.n_baskets),
            "candidate_baskets": np.log((counts_b + 1.0) / self.n_baskets),
            "candidate_recent_share": self.recent_counts[b] / np.maximum(counts_b, 1.0),
            "candidate_age": self.first_seen[b] / self.n_baskets,
            "candidate_idle": self.last_seen[b] / self.n_baskets,
            "price_ratio": np.where(np.isfinite(price_ratio), price_ratio, np.nan),
        }
        return np.column_stack([columns[name] for name in FEATURES]).astype(np.float32)


def _best(matrix: sp.csr_matrix, row: int, k: int, exclude: int | None = None) -> np.ndarray:
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    columns, values = matrix.indices[start:end], matrix.data[start:end]
    keep = values > 0 if exclude is None else (values > 0) & (columns != exclude)
    columns, values = columns[keep], values[keep]
    if len(columns) > k:
        top = np.argpartition(-values, k - 1)[:k]
        columns = columns[top]
    return columns


def _pick(matrix: sp.csr_matrix, a: np.ndarray, b: np.ndarray, chunk: int = 512) -> np.ndarray:
    """matrix[a, b] for many pairs: anchors' rows made dense a chunk at a time (scipy's pair lookup is
    several times slower on rows this full)."""
    anchors, position = np.unique(a, return_inverse=True)
    values = np.empty(len(a))
    for first in range(0, len(anchors), chunk):
        dense = matrix[anchors[first : first + chunk]].toarray()
        mine = (position >= first) & (position < first + chunk)
        values[mine] = dense[position[mine] - first, b[mine]]
    return values


def _row_rank(matrix: sp.csr_matrix, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of b in row a of a non-negative matrix; absent pairs rank after every stored one."""
    values = _pick(matrix, a, b)
    ranks = np.empty(len(a))
    order = np.argsort(a, kind="stable")
    anchors, starts = np.unique(a[order], return_index=True)
    for anchor, chunk in zip(anchors, np.split(order, starts[1:]), strict=True):
        row = np.sort(matrix.data[matrix.indptr[anchor] : matrix.indptr[anchor + 1]])
        mine = values[chunk]
        below = np.searchsorted(row, mine, side="left")
        ranks[chunk] = np.where(mine > 0, len(row) - below + 1, len(row) + 1)
    return ranks


def label_windows(
    baskets: Sequence[Sequence[str]],
    customers: Sequence[str | None] | None,
    catalog: pd.DataFrame | None,
    prior_config: ComplementConfig,
    config: RankerConfig,
) -> Iterator[tuple[Signals, sp.csr_matrix, np.ndarray, np.ndarray]]:
    """The ranker's label windows, oldest first: the signals from the baskets before each, its baskets of two
    or more products (incidence rows over the signals' items) and its candidate pairs (anchor, candidate) for
    every item that shares one of them with another known item. Windows with no such item are skipped."""
    ends = [len(baskets) - i * config.window for i in range(config.label_windows)]
    usable = sorted(e for e in ends if e - config.window >= config.min_history)
    for end in tqdm(usable, desc="complement ranker windows", unit="window", disable=None, leave=False):
        start = end - config.window
        history_customers = None if customers is None else customers[:start]
        signals = Signals.compute(baskets[:start], history_customers, catalog, prior_config, config.recent)
        window = incidence([b for b in baskets[start:end] if len(set(b)) >= 2], signals.vocab)
        paired = window[np.asarray(window.sum(axis=1)).ravel() >= 2]  # baskets with two known items
        a, b = signals.candidates(np.flatnonzero(np.asarray(paired.sum(axis=0)).ravel()), config)
        if len(a):
            yield signals, window, a, b


def training_set(
    baskets: Sequence[Sequence[str]],
    customers: Sequence[str | None] | None,
    catalog: pd.DataFrame | None,
    prior_config: ComplementConfig,
    config: RankerConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, labels and weights of every candidate pair of the label windows (oldest window first).

    For an anchor a of a window, the label of candidate b is the share of a's recall that b earns: the
    baskets holding both, each weighing 1 / (its size - 1), over the baskets holding a. The pair weighs the
    number of baskets holding a. Ranking b by this label is what maximises Recall@k of basket completion.
    """
    features, labels, weights = [], [], []
    for signals, window, a, b in label_windows(baskets, customers, catalog, prior_config, config):
        sizes = np.maximum(np.asarray(window.sum(axis=1)).ravel() - 1.0, 1.0)
        together = (window.T @ sp.diags(1.0 / sizes) @ window).tocsr()
        together.setdiag(0.0)  # an anchor is not its own candidate's label
        held = np.asarray(window.sum(axis=0)).ravel()
        features.append(signals.features(a, b))
        labels.append(_pick(together, a, b) / held[a])
        weights.append(held[a])
    if not features:
        raise ValueError(
            f"too few baskets to train the complement ranker: {len(baskets)}, need at least "
            f"{config.min_history + config.window}"
        )
    return np.concatenate(features), np.concatenate(labels), np.concatenate(weights)


def train_ranker(
    baskets: Sequence[Sequence[str]],
    customers: Sequence[str | None] | None,
    catalog: pd.DataFrame | None,
    prior_config: ComplementConfig,
    config: RankerConfig,
) -> lgb.Booster:
    return fit_booster(*training_set(baskets, customers, catalog, prior_config, config), config)


def fit_booster(
    features: np.ndarray, labels: np.ndarray, weights: np.ndarray, config: RankerConfig
) -> lgb.Booster:
    """Pointwise cross-entropy trees on recall-share labels (`training_set`), with the config's settings."""
    import lightgbm as lgb

    params = {
        "objective": "cross_entropy",
        "learning_rate": config.learning_rate,
        "num_leaves": config.leaves,
        "min_child_samples": config.min_child_samples,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
    }
    data = lgb.Dataset(features, labels, weight=weights, feature_name=list(FEATURES))
    return lgb.train(params, data, num_boost_round=config.trees)


def fit_complements(
    baskets: Sequence[Sequence[str]],
    catalog: pd.DataFrame | None = None,
    customers: Sequence[str | None] | None = None,
    config: RankerConfig | None = None,
) -> ComplementModel:
    """The complement model `bundlecast train` ships: the learned ranker where there are baskets enough to
    train it on (one label window after `min_history`), else the hand-set model, which says so."""
    config = config or RankerConfig()
    if len(baskets) < config.min_history + config.window:
        log.warning(
            "%d baskets: too few for the complement ranker (needs %d); using the hand-set complement model",
            len(baskets),
            config.min_history + config.window,
        )
        return ComplementModel.fit(baskets, catalog, customers=customers)
    return fit_ranked(baskets, catalog, customers, config=config)


def fit_ranked(
    baskets: Sequence[Sequence[str]],
    catalog: pd.DataFrame | None = None,
    customers: Sequence[str | None] | None = None,
    prior_config: ComplementConfig | None = None,
    config: RankerConfig | None = None,
) -> ComplementModel:
    """The complement model whose rows are the ranker's order (see the module docstring)."""
    prior_config = prior_config or ComplementConfig()
    config = config or RankerConfig()
    booster = train_ranker(baskets, customers, catalog, prior_config, config)
    signals = Signals.compute(baskets, customers, catalog, prior_config, config.recent)
    a, b = signals.candidates(np.arange(len(signals.vocab)), config)
    features = signals.features(a, b)
    raw = booster.predict(features, raw_score=True)
    named = _row_top(a, raw, NAMED_PER_ROW)
    signal = pair_signals(booster, features[named], raw[named])
    learned, hand_set = _row_softmax(a, raw), _pick(signals.prior, a, b)
    scores = (1 - config.prior_weight) * learned + config.prior_weight * hand_set
    n = len(signals.vocab)
    prior = signals.prior_model
    return ComplementModel(
        prior.vocab,
        sp.csr_matrix((scores.astype(np.float32), (a, b)), shape=(n, n)),
        prior.baskets,
        prior.popularity,
        prior.config,
        signals=sp.csr_matrix((signal + 1, (a[named], b[named])), shape=(n, n), dtype=np.int8),
        ranker=ranker_summary(booster, config),
    )


def pair_signals(booster: lgb.Booster, features: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Index into SIGNAL_NAMES of the evidence behind each pair's score (see NO_EVIDENCE)."""
    drops = []
    for signal in SIGNAL_NAMES[:-1]:
        without = features.copy()
        for name, value in NO_EVIDENCE[signal].items():
            without[:, FEATURES.index(name)] = value
        drops.append(raw - booster.predict(without, raw_score=True))
    drops.append(np.zeros(len(raw)))  # SIGNAL_NAMES[-1], popularity: no family's evidence raises the score
    return np.argmax(np.column_stack(drops), axis=1).astype(np.int8)


def _row_top(rows: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k largest values within each row (rows are contiguous runs)."""
    boundaries = np.flatnonzero(np.diff(rows)) + 1
    chunks = np.split(np.arange(len(values)), boundaries)
    return np.concatenate([chunk[np.argsort(-values[chunk], kind="stable")[:k]] for chunk in chunks])


def _row_softmax(rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """exp(value - row max), normalised within each row (rows are contiguous runs)."""
    out = np.empty(len(values))
    boundaries = np.flatnonzero(np.diff(rows)) + 1
    for chunk in np.split(np.arange(len(values)), boundaries):
        shifted = np.exp(values[chunk] - values[chunk].max())
        out[chunk] = shifted / shifted.sum()
    return out


def ranker_summary(booster: lgb.Booster, config: RankerConfig) -> dict[str, object]:
    """What was learned, kept with the artifact: the settings and each feature's share of the total gain."""
    gain = booster.feature_importance(importance_type="gain")
    total = max(float(gain.sum()), 1e-12)
    shares = {f: round(float(g) / total, 4) for f, g in zip(FEATURES, gain, strict=True)}
    return {"config": asdict(config), "gain_share": shares}
