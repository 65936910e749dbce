"""What explanations and bundles read from a trained artifact.

A protocol rather than `Recommender` itself, which satisfies it: `model.explain` and `model.bundles` then
depend on this small surface, and `model.recommender`, which uses them, is imported by neither.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

import numpy as np
import pandas as pd

from model.complement.model import ComplementModel
from model.vocab import ItemVocab


class TrainedItems(Protocol):
    version: str
    vocab: ItemVocab
    item_vectors: np.ndarray  # (items, d): a session vector . an item's row is its model score
    popularity: np.ndarray  # training interactions per item
    catalog: pd.DataFrame | None
    complements: ComplementModel | None

    @property
    def names(self) -> Mapping[str, str]:
        """Display names by item id."""
        ...

    def known(self, history: Sequence[str]) -> bool:
        """Whether any item of the history is known to the session model."""
        ...

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most frequent training items, as (id, share of training interactions)."""
        ...
