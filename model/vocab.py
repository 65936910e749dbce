"""String item ids <-> dense integer indices, shared by the model, the baselines and the index."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path


class ItemVocab:
    """Dense indices 0..n-1 over the items seen in training, in first-seen order (deterministic)."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids: list[str] = list(item_ids)
        self._index: dict[str, int] = {item: i for i, item in enumerate(self.item_ids)}
        if len(self._index) != len(self.item_ids):
            raise ValueError("item ids in a vocabulary must be unique")

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[str]]) -> ItemVocab:
        seen: dict[str, None] = {}
        for items in sequences:
            seen.update(dict.fromkeys(items))
        return cls(list(seen))

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def get(self, item_id: str) -> int | None:
        """Index of a known item, None for an unknown one (unknown ids are ignored, never an error)."""
        return self._index.get(item_id)

    def encode(self, items: Iterable[str]) -> list[int]:
        """Indices of the known items, unknown ones dropped, order kept."""
        return [i for i in map(self._index.get, items) if i is not None]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.item_ids))

    @classmethod
    def load(cls, path: Path) -> ItemVocab:
        return cls(json.loads(path.read_text()))
