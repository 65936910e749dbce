"""From item-id histories to model inputs and session encodings, shared by validation and serving."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, pairwise

import numpy as np
import torch

from model.contract import EVENT_TYPES
from model.sasrec.model import PAD, SessionModel
from model.vocab import ItemVocab

TYPE_IDS = {name: i + 1 for i, name in enumerate(EVENT_TYPES)}  # 0 is padding


def encode_history(
    items: Sequence[str], types: Sequence[str] | None, vocab: ItemVocab
) -> tuple[list[int], list[int]]:
    """Model inputs: known items shifted by one (0 = padding) and their type ids; unknown ids dropped."""
    types = types if types is not None else ("view",) * len(items)
    pairs = [
        (vocab.get(item), TYPE_IDS.get(kind, TYPE_IDS["view"]))
        for item, kind in zip(items, types, strict=True)
    ]
    known = [(index + 1, kind) for index, kind in pairs if index is not None]
    return [index for index, _ in known], [kind for _, kind in known]


def left_pad(rows: Sequence[Sequence[int]], length: int, fill: int) -> torch.Tensor:
    """(len(rows), length) tensor of each row's last `length` values, right-aligned after `fill`.

    One scatter for the whole batch: serving pads thousands of short leave-one-out variants per batch.
    """
    kept = [row[-length:] for row in rows] if length > 0 else [[] for _ in rows]
    sizes = np.fromiter((len(row) for row in kept), dtype=np.int64, count=len(kept))
    out = np.full((len(kept), length), fill, dtype=np.int64)
    total = int(sizes.sum())
    if total:
        values = np.fromiter(chain.from_iterable(kept), dtype=np.int64, count=total)
        starts = np.repeat(np.cumsum(sizes) - sizes, sizes)  # flat index where each value's row begins
        columns = length - np.repeat(sizes, sizes) + np.arange(total) - starts
        out[np.repeat(np.arange(len(kept)), sizes), columns] = values
    return torch.from_numpy(out)


def history_batch(
    histories: Sequence[tuple[list[int], list[int]]], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (items, types) tensors of encoded histories, cut to the latest max_len events."""
    length = max(1, min(max_len, max(len(items) for items, _ in histories)))
    return left_pad([h[0] for h in histories], length, PAD), left_pad([h[1] for h in histories], length, PAD)


@dataclass(frozen=True)
class EncodedSessions:
    """What the model says about a batch of histories.

    `vectors[b] @ item_vector` is the model score of any item; items the user already touched also
    get `repeats[b][item_index]` on top (the learned repeat bonus), so the full score of a session item
    is the sum.
    """

    vectors: np.ndarray  # (B, d) float32
    repeats: list[dict[int, float]]

    def __len__(self) -> int:
        return len(self.vectors)

    def __getitem__(self, rows: slice | Sequence[int]) -> EncodedSessions:
        if isinstance(rows, slice):
            return EncodedSessions(self.vectors[rows], self.repeats[rows])
        return EncodedSessions(self.vectors[list(rows)], [self.repeats[row] for row in rows])

    def repeat_entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The repeat bonuses as flat arrays: (row, item index, bonus) of every session item."""
        rows = np.repeat(np.arange(len(self)), [len(repeats) for repeats in self.repeats])
        items = np.fromiter((i for r in self.repeats for i in r), dtype=np.int64, count=len(rows))
        bonuses = np.fromiter(
            (b for r in self.repeats for b in r.values()), dtype=np.float64, count=len(rows)
        )
        return rows, items, bonuses

    def scores(self, item_vectors: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
        """Full scores (B, n) of the items `columns` index (distinct rows; default: all of `item_vectors`)."""
        picked = item_vectors if columns is None else item_vectors[columns]
        scores = self.vectors @ picked.T
        position = None if columns is None else {int(c): i for i, c in enumerate(columns)}
        for row, repeats in enumerate(self.repeats):
            for item, bonus in repeats.items():
                column = item if position is None else position.get(item)
                if column is not None:
                    scores[row, column] += bonus
        return scores


@torch.inference_mode()
def encode_sessions(
    model: SessionModel,
    histories: Sequence[tuple[list[int], list[int]]],
    device: torch.device,
    batch_size: int = 1024,
) -> EncodedSessions:
    """Session vectors and repeat bonuses for encoded histories, one forward pass per batch.

    Beyond one batch, histories are batched by length: a batch is padded to its longest history, and in a
    mixed batch of mostly short sessions the padding would be most of the work.
    """
    if model.training:  # (switching a module tree's mode costs more than a small batch's forward)
        model.eval()
    if len(histories) > batch_size:
        order = np.argsort([len(items) for items, _ in histories], kind="stable")
    else:
        order = np.arange(len(histories))
    vectors = np.zeros((len(histories), model.vector_dim), dtype=np.float32)
    repeats: list[dict[int, float]] = [{} for _ in histories]
    for start in range(0, len(histories), batch_size):
        rows = order[start : start + batch_size]
        items, types = history_batch([histories[row] for row in rows], model.config.max_len)
        session, bonus = model.encode_last(items.to(device), types.to(device))
        vectors[rows] = session.cpu().numpy()
        for row, summed in zip(
            rows.tolist(),
            _summed_bonus(items.numpy(), bonus.cpu().numpy(), model.config.n_items),
            strict=True,
        ):
            repeats[row] = summed
    return EncodedSessions(vectors, repeats)


def _summed_bonus(items: np.ndarray, bonus: np.ndarray, n_items: int) -> list[dict[int, float]]:
    """Per row, item index -> its summed repeat bonus (an item seen twice gets both), padding skipped.

    Vectorised over the batch: sort (row, item) keys once, sum with bincount, then slice per row.
    """
    real = items != PAD
    keys = np.nonzero(real)[0] * (n_items + 1) + items[real]
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=bonus[real].astype(np.float64)).tolist()
    rows, item_ids = np.divmod(unique, n_items + 1)
    bounds = np.searchsorted(rows, np.arange(len(items) + 1)).tolist()
    indices = (item_ids - 1).tolist()
    return [dict(zip(indices[begin:end], sums[begin:end], strict=True)) for begin, end in pairwise(bounds)]


@dataclass(frozen=True)
class LeaveOneOut:
    """Histories encoded together with their leave-one-out variants (see `encode_leave_one_out`)."""

    encoded: EncodedSessions  # every distinct model input of the batch
    rows: list[list[int]]  # per history: its full input's row, then one row per left-out position
    positions: list[list[int]]  # per history: the history positions left out, aligned with rows[1:]

    @property
    def sessions(self) -> EncodedSessions:
        """One row per history: its full input."""
        return self.encoded[[rows[0] for rows in self.rows]]


def encode_leave_one_out(
    model: SessionModel,
    vocab: ItemVocab,
    histories: Sequence[Sequence[str]],
    types: Sequence[Sequence[str]],
    window: int,
    device: torch.device,
) -> LeaveOneOut:
    """Encode histories and, for each of their last `window` known events, the history without it, in
    one batched forward.

    Each history is mapped to model inputs once (a variant is its input minus one event), and identical
    inputs (a repeated event, or two users with one history) are encoded once. A history with no known
    item gets a zero session vector and no variants.
    """
    inputs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}  # distinct model input -> its row

    def row_of(indices: list[int], type_ids: list[int]) -> int:
        return inputs.setdefault((tuple(indices), tuple(type_ids)), len(inputs))

    rows: list[list[int]] = []
    positions: list[list[int]] = []
    for history, event_types in zip(histories, types, strict=True):
        indices, type_ids = encode_history(history, event_types, vocab)
        known = [p for p, item in enumerate(history) if item in vocab]  # aligned with `indices`
        left_out = [j for j, p in enumerate(known) if p >= len(history) - window]
        rows.append(
            [
                row_of(indices, type_ids),
                *(row_of(indices[:j] + indices[j + 1 :], type_ids[:j] + type_ids[j + 1 :]) for j in left_out),
            ]
        )
        positions.append([known[j] for j in left_out])
    distinct = list(inputs)
    encoded = encode_sessions(model, distinct, device)
    encoded.vectors[[not indices for indices, _ in distinct]] = 0.0
    return LeaveOneOut(encoded, rows, positions)
