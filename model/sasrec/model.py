"""SASRec-family session encoder: causal self-attention over a user's recent events.

Kept in one readable file in the spirit of nanoGPT. Inputs are item indices shifted by one (0 is padding),
event-type ids and positions counted from the oldest event of the window (counted back from the latest event,
a training position would tell the model how many events its window still holds after it). The output item
table is the input table (tied), which is what goes into FAISS: a session vector's inner product with an item
row is the model's score.

Shoppers return to what they just viewed, and one vector cannot point at every item of the session and at
the next new one at once, so items already in the session also get a learned repeat bonus (RepeatNet's
idea, kept cheap): it depends on how many events ago the item was seen, its event type and a gate read
from the session state. Only session items get it, so exact top-k stays "FAISS top-k by inner product,
merged with the rescored session items".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.contract import EVENT_TYPES

PAD = 0


@dataclass
class SASRecConfig:
    n_items: int
    max_len: int = 50
    dim: int = 96
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.25
    # Scores are cosine / temperature: normalised vectors train better on sparse data.
    temperature: float = 0.07
    repeat_scale: float = 1.0  # weight of the repeat bonus when serving; calibrated on validation

    def to_dict(self) -> dict[str, int | float]:
        return asdict(self)


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy, F.cross_entropy's value and gradient with fewer passes over the logits.

    The logits of a step (predicted events x sampled items) are by far its largest tensor, and on a CPU
    the passes over them, not the FLOPs, set the step time. Only the log-probabilities are kept for
    backward, which turns them into the gradient in place; the logits themselves are freed after forward.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        log_probs = torch.log_softmax(logits, dim=1)
        ctx.save_for_backward(log_probs, target)
        return -log_probs.gather(1, target[:, None]).mean()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_probs, target = ctx.saved_tensors
        gradient = log_probs.exp_()  # softmax - one_hot(target), scaled by the mean's 1/N
        gradient[torch.arange(len(target), device=target.device), target] -= 1.0
        return gradient.mul_(grad / len(target)), None


class CausalSelfAttention(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention output at every position of `x`, or only at `rows` (B, Q: positions per input) as
        (B, Q, d). Keys and values come from every position either way; the mask (B, 1, L, L) says which
        position each one sees."""
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).split(dim, dim=2)
        q, k, v = (
            t.view(batch, length, self.n_heads, dim // self.n_heads).transpose(1, 2) for t in (q, k, v)
        )
        if rows is not None:
            picked = rows[:, None, :, None]
            q = q.gather(2, picked.expand(-1, self.n_heads, -1, q.shape[-1]))
            attn_mask = attn_mask.gather(2, picked.expand(-1, attn_mask.shape[1], -1, length))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(y.transpose(1, 2).reshape(batch, -1, dim))


class Block(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = nn.Sequential(
            nn.Linear(config.dim, 4 * config.dim),
            nn.GELU(),
            nn.Linear(4 * config.dim, config.dim),
            nn.Dropout(config.dropout),
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block's output at every position, or only at `rows` (B, Q) as (B, Q, d): keys and values
        still come from every position, but nothing else does."""
        attended = self.attn(self.ln_1(x), attn_mask, rows)
        if rows is not None:
            x = x.gather(1, rows[:, :, None].expand(-1, -1, x.shape[-1]))
        x = x + self.dropout(attended)
        return x + self.mlp(self.ln_2(x))


class SASRec(nn.Module):
    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.item_emb = nn.Embedding(config.n_items + 1, config.dim, padding_idx=PAD)
        self.type_emb = nn.Embedding(len(EVENT_TYPES) + 1, config.dim, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.repeat_distance = nn.Parameter(torch.zeros(config.max_len))
        self.repeat_type = nn.Parameter(torch.zeros(len(EVENT_TYPES) + 1))
        self.repeat_gate = nn.Linear(config.dim, 1)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.type_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def hidden(self, items: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """Per-position session vectors (B, L, d) for left-padded inputs; position t sees events <= t only."""
        return self.hidden_at(items, types, *self.left_padded(items))

    def left_padded(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_at`'s positions and visibility for left-padded inputs: positions count from the oldest
        event, each event sees itself and the events before it."""
        length = items.shape[1]
        valid = items != PAD
        positions = (valid.cumsum(1) - 1).clamp(min=0, max=self.config.max_len - 1)
        causal = torch.ones(length, length, dtype=torch.bool, device=items.device).tril()
        # Keys must be real events; every query may see itself, so padded rows never attend to nothing (NaN).
        visible = (causal & valid[:, None, :]) | torch.eye(length, dtype=torch.bool, device=items.device)
        return positions, visible

    def hidden_at(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`hidden` for inputs laid out freely: row r of input b holds an event at `positions[b, r]`
        that sees the rows `visible[b, r]` marks (itself among them). Several sequences can then share
        rows: a history and its leave-one-out variants share every event before the dropped one
        (`encode_rows`). With `rows` (B, Q), the output is only at those rows (B, Q, d): the last block
        then runs its queries, projection and MLP for those rows alone, which is all serving reads (the
        demo model's one-block forward of a micro-batch's variants: 3-5x faster, BENCHMARKS)."""
        valid = items != PAD
        x = self.item_emb(items) + self.type_emb(types) + self.pos_emb(positions)
        x = self.drop(x * valid.unsqueeze(-1))
        attn_mask = visible.unsqueeze(1)
        last_block = len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, attn_mask, rows if depth == last_block else None)
        return self.ln_f(x)

    @property
    def vector_dim(self) -> int:
        """Width of session vectors and item rows (what the FAISS index holds)."""
        return self.config.dim

    def item_vectors(self) -> torch.Tensor:
        """The item table that goes into FAISS: unit rows, padding row dropped."""
        return F.normalize(self.item_emb.weight[1:], dim=-1)

    def session_vectors(self, hidden: torch.Tensor) -> torch.Tensor:
        """Session vectors whose inner product with `item_vectors` is the score (cosine / temperature)."""
        return F.normalize(hidden, dim=-1) / self.config.temperature

    def repeat_bonus(self, gate: torch.Tensor, types: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        """Bonus of a session event for one prediction: `gate` is `repeat_gate` of the predicting
        position's hidden state (computed once per position, not once per event pair), `types` the
        event's type, `distance` how many events before that position it happened."""
        return F.softplus(gate + self.repeat_distance[distance] + self.repeat_type[types])

    def encode_last(self, items: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For left-padded histories: session vectors (B, d) at the latest event, and the repeat bonus
        (B, L) of each history position for that prediction (0 on padding)."""
        last = torch.full((items.shape[0], 1), items.shape[1] - 1, device=items.device)
        vectors, bonus = self.encode_rows(items, types, *self.left_padded(items), last)
        return vectors[:, 0], bonus[:, 0]

    def encode_rows(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Session vectors and repeat bonuses of sequences laid out as `hidden_at` takes them: the sequence
        that ends at row `rows[b, q]` is that row and every row it sees. Returns its session vector
        (B, Q, d) and the repeat bonus (B, Q, L) of each row for its prediction (0 on rows it does not
        see). `encode_last` is its one-sequence-per-input form."""
        hidden = self.hidden_at(items, types, positions, visible, rows)
        ends = rows[:, :, None]
        seen = visible.gather(1, ends.expand(-1, -1, visible.shape[-1]))  # (B, Q, L)
        distance = (positions.gather(1, rows)[:, :, None] - positions[:, None, :]).clamp(min=0)
        gate = self.repeat_gate(hidden)  # (B, Q, 1)
        bonus = self.repeat_bonus(gate, types[:, None, :], distance) * seen * self.config.repeat_scale
        return self.session_vectors(hidden), bonus

    def loss(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        targets: torch.Tensor,
        candidates: torch.Tensor | None = None,
        log_q: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax cross-entropy at every position with a target (targets: item index, -1 for none).

        With `candidates` (sorted unique item indices holding every target and every input item) the
        softmax runs over those items only: sampled softmax, for catalogues too large for a full softmax
        per step. `log_q` (log of each candidate's expected count in the sample) corrects the logits so
        that popular items, sampled more often as in-batch targets, are not pushed down more than a full
        softmax would (the logQ correction).
        """
        hidden = self.hidden(items, types)
        has_target = targets >= 0
        session_vectors = self.session_vectors(hidden[has_target])
        if candidates is None:
            logits = session_vectors @ self.item_vectors().T
            columns = items - 1
        else:
            item_vectors = F.normalize(self.item_emb(candidates + 1), dim=-1)
            if log_q is None:
                logits = session_vectors @ item_vectors.T
            else:  # one BLAS call: the correction is the product's starting value
                logits = torch.addmm(-log_q, session_vectors, item_vectors.T)
            columns = torch.searchsorted(candidates, (items - 1).clamp(min=0))
        # Repeat bonus of every earlier-or-same input event j for the prediction at position t.
        batch, length = items.shape
        position = torch.arange(length, device=items.device)
        distance = position[:, None] - position[None, :]
        pairs = has_target[:, :, None] & (items != PAD)[:, None, :] & (distance >= 0)
        b, t, j = pairs.nonzero(as_tuple=True)
        row_of = (has_target.flatten().cumsum(0) - 1).view(batch, length)
        gate = self.repeat_gate(hidden).squeeze(-1)
        bonus = self.repeat_bonus(gate[b, t], types[b, j], distance[t, j])
        logits.index_put_((row_of[b, t], columns[b, j]), bonus, accumulate=True)  # in place: logits are big
        target = targets[has_target]
        if candidates is not None:
            target = torch.searchsorted(candidates, target)
        return SoftmaxCrossEntropy.apply(logits, target)


class SASRecEnsemble(nn.Module):
    """SASRecs trained apart (same data and vocabulary, other seeds), served as one model scoring their mean.

    Models that differ only in their seed still miss different targets, so their mean ranks better than
    either one (measured in BENCHMARKS). Session vectors and item rows are the members' side by side, each
    session part divided by the member count, so one FAISS index over the joined rows ranks exactly by the
    mean score; the repeat bonus is the members' mean too. It has SASRec's serving interface (`config`,
    `vector_dim`, `item_vectors`, `encode_last`, `encode_rows`), so encoding, search and explanations take
    either.
    """

    def __init__(self, members: Sequence[SASRec]) -> None:
        super().__init__()
        if len({(m.config.n_items, m.config.max_len) for m in members}) != 1:
            raise ValueError("ensemble members must share their vocabulary and window length")
        self.members = nn.ModuleList(members)
        self.config = members[0].config  # n_items and max_len, the same for every member

    @property
    def vector_dim(self) -> int:
        return sum(member.config.dim for member in self.members)

    def item_vectors(self) -> torch.Tensor:
        return torch.cat([member.item_vectors() for member in self.members], dim=1)

    def encode_last(self, items: torch.Tensor, types: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean([member.encode_last(items, types) for member in self.members])

    def encode_rows(
        self,
        items: torch.Tensor,
        types: torch.Tensor,
        positions: torch.Tensor,
        visible: torch.Tensor,
        rows: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean(
            [member.encode_rows(items, types, positions, visible, rows) for member in self.members]
        )

    @staticmethod
    def _mean(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' session vectors side by side (scaled so the joined inner product is the mean
        score) and their mean repeat bonus."""
        count = len(parts)
        vectors = torch.cat([vector for vector, _ in parts], dim=-1) / count
        return vectors, torch.stack([bonus for _, bonus in parts]).mean(0)


SessionModel = SASRec | SASRecEnsemble


def session_model(members: Sequence[SASRec]) -> SessionModel:
    """The model that serves `members`: the one SASRec itself, or their ensemble."""
    return members[0] if len(members) == 1 else SASRecEnsemble(members)
