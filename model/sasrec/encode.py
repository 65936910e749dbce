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


Encoded = tuple[np.ndarray, list[dict[int, float]]]  # session vectors (B, d) and repeat bonuses of a batch


@torch.inference_mode()
def _forward(
    model: SessionModel,
    histories: Sequence[tuple[Sequence[int], Sequence[int]]],
    device: torch.device,
    length: int,
) -> Encoded:
    """One batched forward of histories left-padded to `length` (see `SASRec.encode_last`)."""
    items = left_pad([h[0] for h in histories], length, PAD)
    types = left_pad([h[1] for h in histories], length, PAD)
    session, bonus = model.encode_last(items.to(device), types.to(device))
    return session.cpu().numpy(), _summed_bonus(items.numpy(), bonus.cpu().numpy(), model.config.n_items)


def _length(histories: Sequence[tuple[Sequence[int], Sequence[int]]], max_len: int) -> int:
    return max(1, min(max_len, max(len(items) for items, _ in histories)))


def encode_sessions(
    model: SessionModel,
    histories: Sequence[tuple[Sequence[int], Sequence[int]]],
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
        batch = [histories[row] for row in rows]
        vectors[rows], found = _forward(model, batch, device, _length(batch, model.config.max_len))
        for row, summed in zip(rows.tolist(), found, strict=True):
            repeats[row] = summed
    return EncodedSessions(vectors, repeats)


def _without(history: tuple[Sequence[int], Sequence[int]], index: int) -> tuple[list[int], list[int]]:
    items, types = history
    return [*items[:index], *items[index + 1 :]], [*types[:index], *types[index + 1 :]]


def _starts(counts: np.ndarray) -> np.ndarray:
    """Where each of consecutive runs of `counts` elements begins."""
    return np.cumsum(counts) - counts


@dataclass(frozen=True)
class SharedRows:
    """Histories and their leave-one-out variants laid out so that they share rows (`SASRec.hidden_at`).

    A variant is its source history up to the dropped event, so with causal attention its rows there are
    the source's at every block. Input b holds history b's events first (at their own positions), then
    each of its variants' events after the dropped one (one position earlier); a variant's row sees the
    history's rows before the dropped event and its own rows up to itself. `ends[b, 0]` is the history's
    last row, `ends[b, 1 + v]` its v-th variant's (the history's row before its last when the last event
    is the one dropped: that variant is a prefix of its history). One forward then serves a history and
    all its variants, and no row is computed twice."""

    items: np.ndarray  # (B, L) item indices, PAD on the rows a shorter history does not fill
    types: np.ndarray  # (B, L)
    positions: np.ndarray  # (B, L)
    visible: np.ndarray  # (B, L, L): row r sees row s
    ends: np.ndarray  # (B, Q) the last row of each sequence, padded with the history's own
    sequences: tuple[np.ndarray, np.ndarray]  # (b, q) in `ends` of every history, then of every variant

    @classmethod
    def build(
        cls, histories: Sequence[tuple[Sequence[int], Sequence[int]]], drops: Sequence[Sequence[int]]
    ) -> SharedRows:
        """Vectorised over the batch: flat per-row arrays, scattered into the padded layout once."""
        sizes = np.array([len(items) for items, _ in histories], dtype=np.int64)
        count = np.array([len(dropped) for dropped in drops], dtype=np.int64)
        source = np.repeat(np.arange(len(histories)), count)  # per variant, in order of their histories
        dropped = np.fromiter(chain.from_iterable(drops), dtype=np.int64, count=int(count.sum()))
        tails = sizes[source] - 1 - dropped  # a variant's own rows: its events after the dropped one
        tail_rows = np.bincount(source, weights=tails, minlength=len(histories)).astype(np.int64)
        firsts = _starts(sizes)  # where each history's events begin in the flat arrays
        tail_starts = _starts(tails) - _starts(tail_rows)[source]  # column after the history's own rows
        # Each row as (history, column, event index in its history, group: 0 own, v + 1 variant v, cut:
        # the own rows it may see are the events before this), own rows first, then the variants' rows.
        own_history = np.repeat(np.arange(len(histories)), sizes)
        own_event = np.arange(int(sizes.sum())) - np.repeat(firsts, sizes)
        variant = np.repeat(np.arange(len(dropped)), tails)
        step = np.arange(int(tails.sum())) - np.repeat(_starts(tails), tails)
        history = np.concatenate([own_history, source[variant]])
        column = np.concatenate([own_event, sizes[source[variant]] + tail_starts[variant] + step])
        event = np.concatenate([own_event, dropped[variant] + 1 + step])
        group = np.concatenate([np.zeros_like(own_event), variant + 1])
        cut = np.concatenate([sizes[own_history], dropped[variant]])
        shape = (len(histories), int((sizes + tail_rows).max()))
        items, types = np.full(shape, PAD), np.full(shape, PAD)
        positions, events, groups, cuts = (np.zeros(shape, dtype=np.int64) for _ in range(4))
        events[:], groups[:] = -1, -1
        at, flat = (history, column), firsts[history] + event
        items[at] = np.fromiter(chain.from_iterable(h[0] for h in histories), dtype=np.int64)[flat]
        types[at] = np.fromiter(chain.from_iterable(h[1] for h in histories), dtype=np.int64)[flat]
        positions[at], events[at], groups[at], cuts[at] = event - (group > 0), event, group, cut
        earlier = events[:, None, :] <= events[:, :, None]
        from_own = (groups[:, None, :] == 0) & (events[:, None, :] < cuts[:, :, None])
        same_group = groups[:, None, :] == groups[:, :, None]
        visible = earlier & (from_own | same_group) & (groups[:, None, :] >= 0)
        visible |= np.eye(shape[1], dtype=bool)  # padding rows see themselves (never nothing: NaN)
        ends = np.repeat((sizes - 1)[:, None], 1 + int(count.max(initial=0)), axis=1)
        variant_column = 1 + np.arange(len(dropped)) - np.repeat(_starts(count), count)
        ends[source, variant_column] = np.where(
            tails > 0, sizes[source] + tail_starts + tails - 1, sizes[source] - 2
        )
        sequences = (
            np.concatenate([np.arange(len(histories)), source]),
            np.concatenate([np.zeros(len(histories), dtype=np.int64), variant_column]),
        )
        return cls(items, types, positions, visible, ends, sequences)


@torch.inference_mode()
def encode_without_one(
    model: SessionModel,
    histories: Sequence[tuple[Sequence[int], Sequence[int]]],
    variants: Sequence[tuple[int, int]],
    device: torch.device,
    batch_size: int = 64,
) -> tuple[EncodedSessions, EncodedSessions]:
    """Histories, and variants of them that each leave one event out: (source history, dropped index).

    A history and its variants are one input of shared rows (`SharedRows`): each variant costs only the
    rows from its dropped event on, and nothing is copied from one forward to another (the same result as
    encoding each variant alone, to float rounding; tested). Leaving out each of the last 10 events of a
    50-event history costs 95 rows instead of 11 x 50. Histories are grouped by row count into forwards of
    `batch_size`. Histories longer than the model's window are encoded whole with their variants (the window
    would shift). An input with no item is not encoded: its vector is zero and it has no repeats.
    """
    if model.training:
        model.eval()
    max_len = model.config.max_len
    vectors = np.zeros((len(histories), model.vector_dim), dtype=np.float32)
    repeats: list[dict[int, float]] = [{} for _ in histories]
    variant_vectors = np.zeros((len(variants), model.vector_dim), dtype=np.float32)
    variant_repeats: list[dict[int, float]] = [{} for _ in variants]
    by_source: dict[int, list[int]] = {}  # sources that share rows with their variants, and those variants
    whole: list[int] = []  # the other variants, encoded whole in one pass with the other histories
    for n, (source, _) in enumerate(variants):
        size = len(histories[source][0])
        if size <= max_len:
            if size > 1:  # else the variant is empty: no item, no vector
                by_source.setdefault(source, []).append(n)
        else:
            whole.append(n)

    def rows(source: int) -> int:  # what it costs in shared rows: its events and its variants' own
        size = len(histories[source][0])
        return size + sum(size - 1 - variants[n][1] for n in by_source[source])

    sources = sorted(by_source, key=rows)
    for start in range(0, len(sources), batch_size):
        chunk = sources[start : start + batch_size]
        members = [by_source[source] for source in chunk]
        shared = SharedRows.build(
            [histories[source] for source in chunk], [[variants[n][1] for n in own] for own in members]
        )
        session, bonus = model.encode_rows(
            *(torch.from_numpy(a).to(device) for a in (shared.items, shared.types, shared.positions)),
            torch.from_numpy(shared.visible).to(device),
            torch.from_numpy(shared.ends).to(device),
        )
        session, bonus = session.cpu().numpy(), bonus.cpu().numpy()
        seen = np.take_along_axis(shared.visible, shared.ends[:, :, None], axis=1)
        seen_items = np.where(seen, shared.items[:, None, :], PAD)
        at = shared.sequences
        found = _summed_bonus(seen_items[at], bonus[at], model.config.n_items)
        encoded = session[at]
        vectors[chunk] = encoded[: len(chunk)]
        for source, summed in zip(chunk, found[: len(chunk)], strict=True):
            repeats[source] = summed
        flat = [n for own in members for n in own]
        variant_vectors[flat] = encoded[len(chunk) :]
        for n, summed in zip(flat, found[len(chunk) :], strict=True):
            variant_repeats[n] = summed
    plain = [row for row in range(len(histories)) if row not in by_source and histories[row][0]]
    if plain or whole:
        inputs = [histories[row] for row in plain] + [
            _without(histories[variants[n][0]], variants[n][1]) for n in whole
        ]
        done = encode_sessions(model, inputs, device)
        vectors[plain], variant_vectors[whole] = done.vectors[: len(plain)], done.vectors[len(plain) :]
        for row, summed in zip(plain, done.repeats[: len(plain)], strict=True):
            repeats[row] = summed
        for n, summed in zip(whole, done.repeats[len(plain) :], strict=True):
            variant_repeats[n] = summed
    return EncodedSessions(vectors, repeats), EncodedSessions(variant_vectors, variant_repeats)


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
    one batched pass (`encode_without_one`: a variant costs only the positions from its dropped event on).

    Each history is mapped to model inputs once, and identical inputs (a repeated event, or two users with
    one history) are encoded once. A history with no known item gets a zero session vector and no variants.
    """
    inputs: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}  # distinct full input -> its row
    variants: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}  # distinct variant -> its row
    variant_of: list[tuple[int, int]] = []  # per variant row: (its full input's row, the dropped index)
    rows: list[list[tuple[bool, int]]] = []  # per history: (is a variant, row), full input first
    positions: list[list[int]] = []
    for history, event_types in zip(histories, types, strict=True):
        indices, type_ids = encode_history(history, event_types, vocab)
        full = inputs.setdefault((tuple(indices), tuple(type_ids)), len(inputs))
        known = [p for p, item in enumerate(history) if item in vocab]  # aligned with `indices`
        left_out = [j for j, p in enumerate(known) if p >= len(history) - window]
        own: list[tuple[bool, int]] = [(False, full)]
        for j in left_out:
            key = (tuple(indices[:j] + indices[j + 1 :]), tuple(type_ids[:j] + type_ids[j + 1 :]))
            if key not in variants:
                variants[key] = len(variants)
                variant_of.append((full, j))
            own.append((True, variants[key]))
        rows.append(own)
        positions.append([known[j] for j in left_out])
    distinct = list(inputs)
    whole, without = encode_without_one(model, distinct, variant_of, device)  # no item: zero vector
    offset = len(distinct)  # variant rows follow the full inputs' in the joined encoding
    encoded = EncodedSessions(
        np.concatenate([whole.vectors, without.vectors]), [*whole.repeats, *without.repeats]
    )
    joined = [[offset + row if is_variant else row for is_variant, row in own] for own in rows]
    return LeaveOneOut(encoded, joined, positions)
