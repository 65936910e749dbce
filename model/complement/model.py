"""The complement model: which products go with which, from baskets and product text.

Raw co-purchase counts ("frequently bought together") rank the shop's best sellers next to everything. The
model keeps the co-purchase signal but fixes its three known faults, each with one knob (tuned on
validation baskets carved from the training period, see `model.complement.evaluate`):

1. Not every basket says as much. A 300-line wholesale order pairs everything with everything, so a basket
   weighs 1 / size**size_power; and tastes drift with the season, so it also weighs
   exp(-age / (recency_scale * n_baskets)), age counted in baskets (baskets arrive in time order).
2. Hubs go with everything. The score of b for anchor a is the weighted conditional P(b | a) divided by
   count(b)**popularity_power (RP3beta-style popularity penalty; 0 is plain conditional co-purchase).
3. Rare items have noisy rows and new ones have none. Each item's row is shrunk toward the rows of its
   nearest neighbours by description (TF-IDF cosine): with n_a baskets of evidence and `prior_strength`
   pseudo-baskets of neighbour evidence, row = (n_a * own + m * neighbours) / (n_a + m). An item that is in
   the catalogue but was never bought still gets complements, from products described like it.

Baskets are only one shopping trip. Where the buyer of each basket is known, the products one customer buys
across invoices (a shop restocking its range) are a second, weaker complement signal that reaches pairs
rarely bought on one invoice: the conditional over customers' purchase sets, weighted by `customer_weight`,
is added to the basket conditional ("customers who bought a also bought b", as in Amazon's item-to-item
collaborative filtering).

Where views are known (event logs), co-viewed pairs are substitutes being compared rather than complements
(Amazon's P-Companion signal: co-purchase minus co-view): the co-view conditional, scaled by
`coview_penalty`, is subtracted before ranking.

Only the `neighbours` best complements per item are kept, as a sparse item x item matrix, so `complete` is
a sparse row sum and the artifact stays small. The basket x item incidence matrix is kept as well, to
report the evidence (pair basket count and lift) behind any pair.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from model.neardup import description_tokens
from model.vocab import ItemVocab

FILES = {
    "config": "complement_config.json",
    "items": "complement_items.json",
    "scores": "complement_scores.npz",
    "baskets": "complement_baskets.npz",
    "popularity": "complement_popularity.npy",
    "signals": "complement_signals.npz",
    "ranker": "complement_ranker.json",
}


# The evidence a bundle member's explanation names (`ComplementModel.signal`): the learned ranker's
# families (model.complement.ranker), the hand-set blend, or none but the item's own popularity.
SIGNAL_NAMES: tuple[str, ...] = (
    "co_purchase",
    "same_customers",
    "similar_description",
    "complement_model",
    "popularity",
)


@dataclass(frozen=True)
class ComplementConfig:
    size_power: float = 1.0
    popularity_power: float = 0.1
    recency_scale: float = 0.5
    prior_strength: float = 10.0
    text_neighbours: int = 10
    neighbours: int = 200
    coview_penalty: float = 1.0
    customer_weight: float = 0.5


def incidence(rows: Sequence[Sequence[str]], vocab: ItemVocab) -> sp.csr_matrix:
    """Binary row x item matrix of the known items of each row (a basket or a session)."""
    indices = [vocab.encode(dict.fromkeys(row)) for row in rows]
    lengths = np.fromiter((len(row) for row in indices), dtype=np.int64, count=len(indices))
    columns = np.fromiter((i for row in indices for i in row), dtype=np.int64, count=int(lengths.sum()))
    pointers = np.concatenate([[0], np.cumsum(lengths)])
    data = np.ones(len(columns), dtype=np.float32)
    return sp.csr_matrix((data, columns, pointers), shape=(len(indices), len(vocab)))


def conditional(matrix: sp.csr_matrix, row_weights: np.ndarray, size_power: float) -> sp.csr_matrix:
    """P(b | a) over weighted rows, each row also down-weighted by its size: D_a^-1 X^T W S^-p X."""
    sizes = np.maximum(np.asarray(matrix.sum(axis=1)).ravel(), 1.0)
    weighted = sp.diags(row_weights.astype(np.float32)) @ matrix
    counts = np.asarray(weighted.sum(axis=0)).ravel()
    pairs = (weighted.T @ (sp.diags((sizes**-size_power).astype(np.float32)) @ matrix)).tocsr()
    pairs.setdiag(0.0)
    pairs.eliminate_zeros()
    return sp.diags(1.0 / np.maximum(counts, 1e-12)) @ pairs


def customer_incidence(
    baskets: Sequence[Sequence[str]], customers: Sequence[str | None], vocab: ItemVocab
) -> sp.csr_matrix:
    """Customer x item matrix of what each known customer bought, on any invoice (anonymous ones left out)."""
    bought: dict[str, list[str]] = {}
    for basket, customer in zip(baskets, customers, strict=True):
        if customer is not None:
            bought.setdefault(customer, []).extend(basket)
    return incidence(list(bought.values()), vocab)


def normalise_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.where(totals > 0, totals, 1.0)) @ matrix).tocsr()


def top_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the k largest positive entries of each row."""
    matrix = matrix.tocsr()
    matrix.data[matrix.data < 0] = 0.0
    matrix.eliminate_zeros()
    rows, columns, values = [], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        data, cols = matrix.data[start:end], matrix.indices[start:end]
        keep = np.argpartition(-data, k)[:k] if len(data) > k else slice(None)
        rows.append(np.full(len(cols[keep]), row))
        columns.append(cols[keep])
        values.append(data[keep])
    return sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=matrix.shape
    )


def tfidf_rows(descriptions: Sequence[str]) -> sp.csr_matrix:
    """Unit-length TF-IDF rows of the descriptions' word sets: a row product is their cosine similarity."""
    tokens = [sorted(set(description_tokens(text))) for text in descriptions]
    terms = ItemVocab.from_sequences(tokens)
    words = incidence(tokens, terms)
    idf = np.log(len(tokens) / np.maximum(np.asarray(words.sum(axis=0)).ravel(), 1.0)).astype(np.float32)
    tfidf = words @ sp.diags(idf)
    norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
    return (sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ tfidf).tocsr()


def text_neighbours(descriptions: Sequence[str], k: int) -> sp.csr_matrix:
    """Row-normalised top-k TF-IDF cosine neighbours of each description (self excluded)."""
    tfidf = tfidf_rows(descriptions)
    similarity = (tfidf @ tfidf.T).tocsr()
    similarity.setdiag(0.0)
    return normalise_rows(top_per_row(similarity, k))


def stored_value(matrix: sp.csr_matrix, row: int, column: int) -> float:
    """matrix[row, column] of a CSR matrix with sorted indices, 0 where nothing is stored: a binary search in
    the row (3.1 us), where scipy's scalar indexing costs 14.6 us, several times per explained bundle.
    `ComplementModel.strength` searches the same way for a whole pool; for one column that costs 13 us."""
    start, end = matrix.indptr[row], matrix.indptr[row + 1]
    at = start + int(np.searchsorted(matrix.indices[start:end], column))
    return float(matrix.data[at]) if at < end and matrix.indices[at] == column else 0.0


class ComplementModel:
    """Item -> complements, from baskets (plus co-views and descriptions when known)."""

    def __init__(
        self,
        vocab: ItemVocab,
        scores: sp.csr_matrix,
        baskets: sp.csc_matrix,
        popularity: np.ndarray,
        config: ComplementConfig,
        signals: sp.csr_matrix | None = None,
        ranker: dict[str, object] | None = None,
    ) -> None:
        self.vocab = vocab
        self.scores = scores.tocsr()
        self.baskets = baskets.tocsc()
        self.popularity = popularity
        self.config = config
        # A learned ranker's scores (model.complement.ranker) come with the signal behind each stored pair
        # (1 + index into SIGNAL_NAMES; 0: not stored) and a summary of what it learned.
        self.signals = None if signals is None else signals.tocsr()
        if self.signals is not None:
            self.signals.sort_indices()  # for `stored_value`
        self.ranker = ranker
        # Bundle assembly asks "how well do a and b go together, either way round" for whole candidate
        # pools at once: one symmetric matrix with sorted rows makes that a searchsorted per member.
        self.pair_strength = self.scores.maximum(self.scores.T).tocsr()
        self.pair_strength.sort_indices()
        self._popularity_tiebreak = 1e-9 * self.popularity / max(float(self.popularity.max()), 1e-12)

    @classmethod
    def fit(
        cls,
        baskets: Sequence[Sequence[str]],
        catalog: pd.DataFrame | None = None,
        views_by_session: Iterable[Sequence[str]] | None = None,
        config: ComplementConfig | None = None,
        customers: Sequence[str | None] | None = None,
    ) -> ComplementModel:
        """Fit on baskets in time order; catalogue items never bought are kept (they get text neighbours).

        `customers`, the buyer of each basket (None for an anonymous one), adds the per-customer signal.
        """
        config = config or ComplementConfig()
        catalog_items = [] if catalog is None else catalog["item_id"].astype(str).tolist()
        vocab = ItemVocab.from_sequences([*baskets, catalog_items])
        matrix = incidence(baskets, vocab)
        age = np.arange(len(baskets))[::-1]
        recency = np.exp(-age / max(config.recency_scale * len(baskets), 1.0))
        purchase = conditional(matrix, recency, config.size_power)
        if customers and config.customer_weight:
            by_customer = customer_incidence(baskets, customers, vocab)
            purchase = purchase + config.customer_weight * conditional(
                by_customer, np.ones(by_customer.shape[0]), config.size_power
            )
        counts = np.asarray((sp.diags(recency) @ matrix).sum(axis=0)).ravel()
        purchase = purchase @ sp.diags(np.maximum(counts, 1e-12) ** -config.popularity_power)
        if views_by_session is not None:
            sessions = incidence(list(views_by_session), vocab)
            coview = conditional(sessions, np.ones(sessions.shape[0]), config.size_power)
            purchase = purchase - config.coview_penalty * coview
        own = normalise_rows(top_per_row(purchase.tocsr(), config.neighbours))
        if catalog is not None:
            described = catalog.set_index(catalog["item_id"].astype(str))["description"]
            texts = [str(described.get(item, "") or "") for item in vocab.item_ids]
            neighbour_rows = text_neighbours(texts, config.text_neighbours) @ own
            evidence = np.diff(matrix.tocsc().indptr).astype(np.float32)
            weight = evidence / np.maximum(evidence + config.prior_strength, 1e-12)
            own = sp.diags(weight) @ own + sp.diags(1.0 - weight) @ neighbour_rows
        scores = top_per_row(own.tocsr(), config.neighbours).astype(np.float32)
        return cls(vocab, scores, matrix.tocsc(), counts.astype(np.float32), config)

    def complete(self, items: Sequence[str], k: int = 10) -> list[tuple[str, float]]:
        """Items that best complete a basket holding `items` (mean of the anchors' complement rows).

        Unknown ids are ignored; with no known anchor the answer is recent popularity, so every caller
        gets k items. The input items themselves are never returned.
        """
        rows, scores = self.complete_rows(self.vocab.encode(items), k)
        return [(self.vocab.item_ids[i], float(s)) for i, s in zip(rows, scores, strict=True)]

    def complete_rows(self, anchors: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """`complete` on vocabulary rows: the best k rows, best first (ties by row), and their scores."""
        anchors = list(dict.fromkeys(anchors))
        if anchors:
            summed = np.zeros(len(self.vocab), dtype=np.float32)
            for anchor in anchors:  # row by row in float32, as a sparse row sum would
                start, end = self.scores.indptr[anchor], self.scores.indptr[anchor + 1]
                summed[self.scores.indices[start:end]] += self.scores.data[start:end]
            scores = summed / len(anchors) + self._popularity_tiebreak
        else:
            scores = self.popularity / max(float(self.popularity.sum()), 1e-12)
        scores = scores.astype(np.float64)
        scores[anchors] = -np.inf
        k = min(k, len(scores) - len(anchors))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return top, scores[top]

    def strength(self, row: int, columns: np.ndarray) -> np.ndarray:
        """Symmetric complement strength of one row with many: the larger of scores[a, b] and scores[b, a]."""
        start, end = self.pair_strength.indptr[row], self.pair_strength.indptr[row + 1]
        if start == end:
            return np.zeros(len(columns))
        kept, values = self.pair_strength.indices[start:end], self.pair_strength.data[start:end]
        found = np.searchsorted(kept, columns).clip(max=len(kept) - 1)
        return np.where(kept[found] == columns, values[found], 0.0).astype(np.float64)

    def signal(self, anchor: str, item: str) -> str:
        """Which of SIGNAL_NAMES put `item` with `anchor`: the ranker's signal of the pair (either way round;
        it names an anchor's best pairs, those bundles draw on), the hand-set blend for a pair the hand-set
        model stored, and popularity for a pair known neither way."""
        ia, ib = self.vocab.get(anchor), self.vocab.get(item)
        if ia is None or ib is None:
            return "popularity"
        if self.signals is not None:
            for row, column in ((ia, ib), (ib, ia)):
                code = int(stored_value(self.signals, row, column))
                if code:
                    return SIGNAL_NAMES[code - 1]
        return "complement_model" if stored_value(self.pair_strength, ia, ib) > 0 else "popularity"

    def evidence(self, a: str, b: str) -> tuple[int, float]:
        """(baskets containing both, lift = P(a, b) / (P(a) P(b))); (0, 0.0) for unknown items."""
        ia, ib = self.vocab.get(a), self.vocab.get(b)
        if ia is None or ib is None:
            return 0, 0.0
        rows_a = self.baskets.indices[self.baskets.indptr[ia] : self.baskets.indptr[ia + 1]]
        rows_b = self.baskets.indices[self.baskets.indptr[ib] : self.baskets.indptr[ib + 1]]
        together = len(np.intersect1d(rows_a, rows_b, assume_unique=True))
        if together == 0:
            return 0, 0.0
        lift = together * self.baskets.shape[0] / (len(rows_a) * len(rows_b))
        return together, float(lift)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / FILES["config"]).write_text(json.dumps(asdict(self.config), indent=2))
        self.vocab.save(directory / FILES["items"])
        sp.save_npz(directory / FILES["scores"], self.scores.astype(np.float32))
        sp.save_npz(directory / FILES["baskets"], self.baskets.astype(np.bool_))
        np.save(directory / FILES["popularity"], self.popularity)
        if self.signals is not None:
            sp.save_npz(directory / FILES["signals"], self.signals)
        if self.ranker is not None:
            (directory / FILES["ranker"]).write_text(json.dumps(self.ranker, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ComplementModel:
        directory = Path(directory)
        config = ComplementConfig(**json.loads((directory / FILES["config"]).read_text()))
        signals, ranker = directory / FILES["signals"], directory / FILES["ranker"]
        return cls(
            vocab=ItemVocab.load(directory / FILES["items"]),
            scores=sp.load_npz(directory / FILES["scores"]).astype(np.float32),
            baskets=sp.load_npz(directory / FILES["baskets"]).astype(np.float32),
            popularity=np.load(directory / FILES["popularity"]),
            config=config,
            signals=sp.load_npz(signals).astype(np.int8) if signals.exists() else None,
            ranker=json.loads(ranker.read_text()) if ranker.exists() else None,
        )

    @staticmethod
    def exists(directory: Path) -> bool:
        return (Path(directory) / FILES["scores"]).exists()
