"""Event logs, dataset adapters and deterministic splits.

Everything downstream (the attention model, the baselines, the evaluation harness, the stream)
speaks the small types defined here, so the datasets differ only in their adapters.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")

# Bundled, attributed subsets of the real data for the demo and the tests (see samples/README.md).
SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"


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
    test_baskets: list[tuple[str, ...]] = field(default_factory=list)  # test-period baskets, if known


def views(items: Sequence[str]) -> Session:
    """A session of plain views, the shape of the RetailRocket data."""
    return Session(tuple(items), ("view",) * len(items))


# --- RetailRocket (SR-GNN preprocessing) -----------------------------------------------------------

# The published test cases start at prefixes of two clicks (a session a b c yields only a b -> c),
# so validation cases are cut the same way to keep validation and test comparable.
RETAILROCKET_MIN_PREFIX = 2


def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _find_file(directory: Path, name: str) -> Path:
    """`name` or its gzipped twin, so the loaders read the full data and the bundled samples alike."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {name} nor {name}.gz in {directory}")


def view_cases(items: Sequence[str], min_prefix: int = RETAILROCKET_MIN_PREFIX) -> list[Case]:
    """Every prefix of a view session (longest first, as in the published test file) -> the next item."""
    ends = range(len(items) - 1, min_prefix - 1, -1)
    return [Case(tuple(items[:end]), ("view",) * end, items[end]) for end in ends]


def load_retailrocket_sessions(directory: Path, valid_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """RetailRocket view sessions with the published test cases.

    `test` is every published case, in file order. Validation is carved from the training sessions:
    the file is roughly chronological, so the last `valid_fraction` of its sessions are held out
    (mimicking the test protocol, which takes the latest sessions) and cut into prefix cases like the
    test cases; `train` is the rest. The split is deterministic; `seed` is accepted for interface
    symmetry with other loaders but a chronological hold-out needs no randomness.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    with _open_text(_find_file(directory, "train_sessions.txt")) as lines:
        sessions = [tuple(line.split()) for line in lines if line.strip()]
    n_train = len(sessions) - round(len(sessions) * valid_fraction)
    valid = [case for items in sessions[n_train:] for case in view_cases(items)]
    return Dataset(
        name="retailrocket-sessions",
        train=[views(items) for items in sessions[:n_train]],
        valid=valid,
        test=_read_view_cases(_find_file(directory, "test_cases.tsv")),
    )


def _read_view_cases(path: Path) -> list[Case]:
    with _open_text(path) as lines:
        header = next(lines, "").rstrip("\n").split("\t")
        if header != ["prefix", "target"]:
            raise ValueError(f"{path}: expected header 'prefix<TAB>target', got {header}")
        cases = []
        for line_number, line in enumerate(lines, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[0].split() or not fields[1].strip():
                raise ValueError(f"{path}:{line_number}: expected a non-empty prefix and a target")
            prefix = tuple(fields[0].split())
            cases.append(Case(prefix, ("view",) * len(prefix), fields[1].strip()))
    return cases
