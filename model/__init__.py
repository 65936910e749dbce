"""Offline core: data, the SASRec session model, baselines, evaluation, complements and bundles.

`Recommender` is imported on first use, so that importing a light part (`model.data`, and through it the
stream's event validation) does not load torch and FAISS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.recommender import Recommender

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        from model.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'model' has no attribute {name!r}")
