"""`Recommender`: the trained session model plus its FAISS index, loaded from a versioned artifact.

`answer_batch` is the one answer seam: a batch of sessions in, explained items and explained bundles out.
The stream and the query API call it once per micro-batch; `recommend` and `bundles` are its one-user
forms; the evaluator ranks with `recommend_batch` (unexplained) or wraps `encode` as a full-ranking
`Scorer`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from index.faiss_index import ItemIndex
from model.answers import Answer, Query, Recommendation, first_distinct
from model.artifacts import CONFIG, new_version, resolve_version
from model.bundles import CANDIDATES_PER_ANCHOR, ExplainedBundle, explained_bundles
from model.bundles import warm_up as warm_up_bundles
from model.complement.model import ComplementModel
from model.complement.ranker import fit_complements
from model.data import Case, Dataset, Session, item_names
from model.explain import ATTRIBUTION_WINDOW, Attribution, explain_items
from model.sasrec.encode import EncodedSessions, encode_leave_one_out
from model.sasrec.model import SASRec, SASRecConfig, SASRecEnsemble, SessionModel, session_model
from model.vocab import ItemVocab


def write_artifact(
    out_root: Path, model: SessionModel, vocab: ItemVocab, dataset: Dataset, report: dict[str, object]
) -> Path:
    """Write every file a `Recommender` needs into a new version and publish it as latest."""
    counts = np.zeros(len(vocab), dtype=np.int64)
    for session in dataset.train:
        np.add.at(counts, vocab.encode(session.items), 1)
    with torch.no_grad():
        item_vectors = model.item_vectors().cpu().numpy().astype(np.float32)
    with new_version(out_root) as scratch:
        config = {
            "model": model.config.to_dict(),
            "members": len(model.members) if isinstance(model, SASRecEnsemble) else 1,
            "dataset": dataset.name,
            "created_at": datetime.now(UTC).isoformat(),
        }
        (scratch / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        vocab.save(scratch / "vocab.json")
        np.save(scratch / "item_embeddings.npy", item_vectors)
        np.save(scratch / "popularity.npy", counts)
        torch.save(model.state_dict(), scratch / "weights.pt")
        (scratch / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        if dataset.catalog is not None:
            dataset.catalog.to_parquet(scratch / "catalog.parquet", index=False)
        ItemIndex.build(item_vectors).save(scratch / "index")
        if dataset.all_baskets:  # every invoice, test weeks included (see `Dataset.all_baskets`)
            complements = fit_complements(dataset.all_baskets, dataset.catalog, dataset.all_basket_customers)
            complements.save(scratch / "complement")
    return resolve_version(out_root)


class Recommender:
    """Session encoder + item index for one artifact version; immutable once loaded (safe to swap whole)."""

    def __init__(
        self,
        version_dir: Path,
        model: SessionModel,
        vocab: ItemVocab,
        item_vectors: np.ndarray,
        index: ItemIndex,
        popularity: np.ndarray,
        catalog: pd.DataFrame | None,
        complements: ComplementModel | None = None,
    ) -> None:
        self.version = version_dir.name
        self.version_dir = version_dir
        self.model = model
        self.vocab = vocab
        self.item_vectors = item_vectors
        self.index = index
        self.popularity = popularity
        self.catalog = catalog
        self.complements = complements
        self._device = next(model.parameters()).device
        self._by_popularity = np.argsort(-popularity, kind="stable")

    @classmethod
    def load(cls, path: Path | str, device: str | None = None) -> Recommender:
        """Load the latest version under an artifact root, or a version directory itself.

        `device` picks where the model runs (cpu/cuda; default: cuda when available); the index follows
        `BUNDLECAST_FAISS_DEVICE` (auto: GPU when faiss has GPU support and a GPU is visible).
        """
        version_dir = resolve_version(Path(path))
        config = json.loads((version_dir / CONFIG).read_text())
        torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model_config = SASRecConfig(**config["model"])
        model = session_model([SASRec(model_config) for _ in range(config.get("members", 1))])
        model.load_state_dict(torch.load(version_dir / "weights.pt", map_location="cpu", weights_only=True))
        model.to(torch_device).eval()
        catalog_path = version_dir / "catalog.parquet"
        return cls(
            version_dir=version_dir,
            model=model,
            vocab=ItemVocab.load(version_dir / "vocab.json"),
            item_vectors=np.load(version_dir / "item_embeddings.npy"),
            index=ItemIndex.load(version_dir / "index"),
            popularity=np.load(version_dir / "popularity.npy"),
            catalog=pd.read_parquet(catalog_path) if catalog_path.is_file() else None,
            complements=ComplementModel.load(version_dir / "complement")
            if ComplementModel.exists(version_dir / "complement")
            else None,
        )

    @cached_property
    def names(self) -> dict[str, str]:
        """Display names by item id (explanations name items by these); see `model.data.item_names`."""
        return {} if self.catalog is None else item_names(self.catalog)

    def known(self, history: Sequence[str]) -> bool:
        """Whether any item of the history is known to the model (else answers fall back to popularity)."""
        return any(item in self.vocab for item in history)

    def attribute(
        self,
        histories: Sequence[Sequence[str]],
        types: Sequence[Sequence[str]],
        window: int = ATTRIBUTION_WINDOW,
    ) -> Attribution:
        """Session vectors of histories, with the leave-one-out variants of their last `window` events that
        explanations read (`model.explain`), in one batched forward."""
        variants = encode_leave_one_out(self.model, self.vocab, histories, types, window, self._device)
        return Attribution(variants, histories, types)

    def encode(
        self, histories: Sequence[Sequence[str]], types: Sequence[Sequence[str]] | None = None
    ) -> EncodedSessions:
        """Session vectors and repeat bonuses, one batched forward; a history with no known item gets a
        zero vector and no repeats."""
        types = types if types is not None else [("view",) * len(history) for history in histories]
        return encode_leave_one_out(self.model, self.vocab, histories, types, 0, self._device).sessions

    def search(
        self, sessions: EncodedSessions, k: int, exclude: Sequence[Collection[str]] | None = None
    ) -> list[list[Recommendation]]:
        """Exact top-k by full model score, one batched FAISS search; excluded ids never appear.

        FAISS returns the best items by inner product; only session items carry a repeat bonus, so
        fetching k + (session items) from FAISS and rescoring the session items is exact.
        """
        if len(sessions) == 0:
            return []
        excluded = [set(self.vocab.encode(items)) for items in exclude] if exclude is not None else None
        fetch = k + max((len(repeats) for repeats in sessions.repeats), default=0)
        scores, ids = self.index.search(sessions.vectors, fetch, excluded)
        answers = []
        for row, repeats in enumerate(sessions.repeats):
            found = ids[row] >= 0
            row_ids, row_scores = ids[row][found], scores[row][found].astype(np.float64)
            rescored = [item for item in repeats if excluded is None or item not in excluded[row]]
            if rescored:
                others = ~np.isin(row_ids, rescored)
                full = self.item_vectors[rescored] @ sessions.vectors[row] + [repeats[i] for i in rescored]
                row_ids = np.concatenate([row_ids[others], rescored])
                row_scores = np.concatenate([row_scores[others], full])
            best = np.lexsort((row_ids, -row_scores))[:k]  # by score, ties by row
            names = [self.vocab.item_ids[item] for item in row_ids[best].tolist()]
            answers.append(list(zip(names, row_scores[best].tolist(), strict=True)))
        return answers

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[Recommendation]:
        """Most frequent training items, as (id, share of training interactions)."""
        total = max(int(self.popularity.sum()), 1)
        picks = []
        for index in self._by_popularity:
            item = self.vocab.item_ids[index]
            if item not in exclude:
                picks.append((item, float(self.popularity[index]) / total))
                if len(picks) == k:
                    break
        return picks

    def answer_batch(
        self,
        queries: Sequence[Query],
        k: int = 20,
        bundles: int = 3,
        bundle_size: int = 3,
        *,
        budget: float | None = None,
        trending: Callable[[int], Sequence[Recommendation]] | None = None,
        stage: Callable[[str], AbstractContextManager[object]] = lambda _: nullcontext(),
    ) -> list[Answer]:
        """The answer seam: for each session, its top-k items and up to `bundles` bundles of
        `bundle_size` items, every one explained (`model.explain`, `model.bundles`).

        One batched forward (sessions and their leave-one-out variants) and one search deep enough for
        the items and the bundle anchors serve the whole batch. Sessions with no known item get
        popularity, `trending` first when given (a live count of the last hours; it is called with how
        many it should return), and no bundles. `stage` times the steps ("model", "faiss", "bundles")
        for whoever measures them. An artifact without a complement model offers no bundles.
        """
        bundles = bundles if self.complements is not None else 0
        depth = max(k, CANDIDATES_PER_ANCHOR) if bundles else k
        attribution, candidates, cold = self._retrieve(queries, depth, ATTRIBUTION_WINDOW, stage)
        rankings = [ranked[:k] for ranked in candidates]
        if cold:
            depth = k + max(len(queries[i].excluded_items) for i in cold)
            sources = ((trending(depth) if trending is not None else ()), self.popular(depth))
            for i in cold:
                rankings[i] = first_distinct(sources, queries[i].excluded_items, k)
        with stage("bundles"):
            items = explain_items(self, attribution, rankings)
            offered = (
                explained_bundles(
                    self,
                    attribution,
                    candidates,
                    [query.cart for query in queries],
                    [query.exclude for query in queries],
                    n=bundles,
                    size=bundle_size,
                    budget=budget,
                )
                if bundles
                else [[] for _ in queries]
            )
        cold_rows = set(cold)
        return [
            Answer(tuple(explained), tuple(offer), row in cold_rows)
            for row, (explained, offer) in enumerate(zip(items, offered, strict=True))
        ]

    def _retrieve(
        self,
        queries: Sequence[Query],
        depth: int,
        window: int,
        stage: Callable[[str], AbstractContextManager[object]],
    ) -> tuple[Attribution, list[list[Recommendation]], list[int]]:
        """The batch's attribution, the model's top `depth` per session (none for a session with no known
        item), and the rows of those cold sessions."""
        with stage("model"):
            attribution = self.attribute(
                [query.history for query in queries], [query.event_types for query in queries], window
            )
        known = [self.known(query.history) for query in queries]
        warm = [row for row, is_known in enumerate(known) if is_known]
        candidates: list[list[Recommendation]] = [[] for _ in queries]
        with stage("faiss"):
            found = self.search(
                attribution.sessions[warm], depth, [queries[row].excluded_items for row in warm]
            )
        for row, ranked in zip(warm, found, strict=True):
            candidates[row] = ranked
        cold = [row for row, is_known in enumerate(known) if not is_known]
        return attribution, candidates, cold

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        types: Sequence[Sequence[str]] | None = None,
        k: int = 20,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Recommendation]]:
        """Top-k (id, score) per history, unexplained (what offline evaluation ranks by); histories with no
        known item get training popularity."""
        exclude = exclude if exclude is not None else [()] * len(histories)
        queries = [
            Query(history, types[row] if types is not None else None, exclude=exclude[row])
            for row, history in enumerate(histories)
        ]
        _, ranked, cold = self._retrieve(queries, k, 0, lambda _: nullcontext())
        for row in cold:
            ranked[row] = self.popular(k, queries[row].excluded_items)
        return ranked

    def recommend(
        self,
        history: Sequence[str],
        k: int = 20,
        exclude: Collection[str] = (),
        types: Sequence[str] | None = None,
    ) -> list[Recommendation]:
        """Top-k items for one history (item ids oldest first); unknown ids are ignored."""
        return self.recommend_batch([history], [types] if types is not None else None, k, [exclude])[0]

    def complete(self, items: Sequence[str], k: int = 10) -> list[Recommendation]:
        """Items that best complete a basket holding `items` (the complement model; see model/complement)."""
        if self.complements is None:
            raise ValueError(f"artifact {self.version} has no complement model (trained without baskets)")
        return self.complements.complete(items, k)

    def bundles(
        self,
        history: Sequence[str],
        cart: Sequence[str] = (),
        n: int = 3,
        size: int = 3,
        budget: float | None = None,
        exclude: Collection[str] = (),
    ) -> list[ExplainedBundle]:
        """Up to n explained bundles of `size` items for one user (see model/bundles.py)."""
        if self.complements is None:
            raise ValueError(f"artifact {self.version} has no complement model (trained without baskets)")
        query = Query(history, cart=cart, exclude=exclude)
        return list(self.answer_batch([query], k=0, bundles=n, bundle_size=size, budget=budget)[0].bundles)

    def warm_up(self) -> None:
        """Build the lazy parts (item names, bundle caches, a first forward) now, so that the first
        answers, possibly right after a hot swap, do not pay for them."""
        popular = [item for item, _ in self.popular(2)]
        if popular:
            if self.complements is not None:
                warm_up_bundles(self)
            self.answer_batch([Query(popular[:1])], k=1, bundles=1)


class RecommenderScorer:
    """A trained artifact as a full-ranking `Scorer` over the harness vocabulary (wrap in `Prefitted`)."""

    name = "SASRec (bundlecast)"

    def __init__(self, recommender: Recommender, vocab: ItemVocab) -> None:
        self.recommender = recommender
        # The harness vocabulary may order items differently; map its columns onto the model's rows.
        rows = [recommender.vocab.get(item) for item in vocab.item_ids]
        self._known = np.array([row is not None for row in rows], dtype=bool)
        self._rows = np.array([row for row in rows if row is not None], dtype=np.int64)

    def fit(self, train: Sequence[Session], vocab: ItemVocab) -> None:
        """Nothing to learn: the artifact is already trained."""

    def score(self, cases: Sequence[Case]) -> np.ndarray:
        sessions = self.recommender.encode([c.prefix for c in cases], [c.prefix_types for c in cases])
        scores = np.full((len(cases), len(self._known)), -np.inf, dtype=np.float32)
        scores[:, self._known] = sessions.scores(self.recommender.item_vectors, self._rows)
        return scores
