"""Event logs, dataset adapters and deterministic splits.

Everything downstream (the attention model, the baselines, the evaluation harness, the stream)
speaks the small types defined here, so the datasets differ only in their adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")


@dataclass(frozen=True)
class Session:
    """One user's events in time order: item ids (strings) and their event types."""

    items: tuple[str, ...]
    types: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    """A next-item prediction case: the events so far and the item that came next."""

    prefix: tuple[str, ...]
    prefix_types: tuple[str, ...]
    target: str


@dataclass
class Dataset:
    """A split dataset. `train` never contains the sessions that `valid` and `test` cases come from."""

    name: str
    train: list[Session]
    valid: list[Case]
    test: list[Case]
    catalog: pd.DataFrame | None = None  # columns: item_id, description, price
    baskets: list[tuple[str, ...]] = field(default_factory=list)  # training-period baskets, if known


def views(items: Sequence[str]) -> Session:
    """A session of plain views, the shape of the RetailRocket data."""
    return Session(tuple(items), ("view",) * len(items))
