"""`Recommender`: the trained session model plus its FAISS index, loaded from a versioned artifact.

This is the one scoring API of the project: the stream calls `encode` + `search` once per micro-batch,
offline users call `recommend`, and the evaluator wraps it as a full-ranking `Scorer`.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from index.faiss_index import ItemIndex
from model.artifacts import CONFIG, new_version, resolve_version
from model.bundles import CANDIDATES_PER_ANCHOR, ExplainedBundle, explained_bundles
from model.complement.model import ComplementModel
from model.data import Case, Dataset, Session, item_names
from model.explain import attribute
from model.sasrec.encode import EncodedSessions, encode_history, encode_sessions
from model.sasrec.model import SASRec, SASRecConfig, SASRecEnsemble, SessionModel, session_model
from model.vocab import ItemVocab

Recommendation = tuple[str, float]


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
        if dataset.baskets:
            ComplementModel.fit(dataset.baskets, dataset.catalog, customers=dataset.basket_customers).save(
                scratch / "complement"
            )
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

    def encode(
        self, histories: Sequence[Sequence[str]], types: Sequence[Sequence[str]] | None = None
    ) -> EncodedSessions:
        """Session vectors and repeat bonuses, one batched forward; a history with no known item gets a
        zero vector and no repeats."""
        encoded = [
            encode_history(history, types[i] if types is not None else None, self.vocab)
            for i, history in enumerate(histories)
        ]
        sessions = encode_sessions(self.model, encoded, self._device)
        sessions.vectors[[not items for items, _ in encoded]] = 0.0
        return sessions

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

    def recommend_batch(
        self,
        histories: Sequence[Sequence[str]],
        types: Sequence[Sequence[str]] | None = None,
        k: int = 20,
        exclude: Sequence[Collection[str]] | None = None,
    ) -> list[list[Recommendation]]:
        """Top-k per history; histories with no known item get popularity instead of the model (and
        are neither encoded nor searched)."""
        exclude = exclude if exclude is not None else [()] * len(histories)
        known = [row for row, history in enumerate(histories) if self.known(history)]
        sessions = self.encode(
            [histories[row] for row in known], [types[row] for row in known] if types is not None else None
        )
        found = dict(zip(known, self.search(sessions, k, [exclude[row] for row in known]), strict=True))
        return [
            found[row] if row in found else self.popular(k, excluded) for row, excluded in enumerate(exclude)
        ]

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

    def bundles_batch(
        self,
        histories: Sequence[Sequence[str]],
        types: Sequence[Sequence[str]] | None = None,
        carts: Sequence[Sequence[str]] | None = None,
        excludes: Sequence[Collection[str]] | None = None,
        n: int = 3,
        size: int = 3,
        budget: float | None = None,
    ) -> list[list[ExplainedBundle]]:
        """Up to n explained bundles of `size` items per user (see model/bundles.py): one batched encode
        (with the attribution their explanations need) and one search for all users."""
        carts = carts if carts is not None else [()] * len(histories)
        excludes = excludes if excludes is not None else [()] * len(histories)
        attribution = attribute(self, histories, types)
        candidates = self.search(
            attribution.sessions,
            CANDIDATES_PER_ANCHOR,
            [{*excluded, *cart} for excluded, cart in zip(excludes, carts, strict=True)],
        )
        return explained_bundles(self, attribution, candidates, carts, excludes, n, size, budget)

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
        return self.bundles_batch([history], None, [cart], [exclude], n=n, size=size, budget=budget)[0]


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
