"""Train the SASRec session encoder: (sampled) softmax cross-entropy, early stopping on validation
HR@20 + MRR@20 at the best repeat weight (what is served after calibration).

Read top to bottom: encode sessions -> batches -> epochs (train, validate, checkpoint, early stop) -> best
weights. `train_artifact` wraps that into a versioned artifact the stream and the evaluator load.
"""

from __future__ import annotations

import json
import random
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds
from tqdm.auto import tqdm

from model.data import Case, Dataset, Session
from model.metrics import UNKNOWN_TARGET, boosted_target_ranks
from model.sasrec.encode import encode_history, encode_sessions, left_pad
from model.sasrec.model import PAD, SASRec, SASRecConfig, session_model
from model.vocab import ItemVocab


@dataclass
class TrainConfig:
    epochs: int = 6
    batch_size: int = 512  # most windows per step
    # Most predicted events per step. The sampled softmax costs targets x candidates, and in-batch targets
    # are candidates too, so one step of 512 long windows costs as much as ~90 steps of short ones.
    step_targets: int = 4096
    lr: float = 5e-3
    weight_decay: float = 0.01
    patience: int = 2  # epochs without validation improvement before stopping
    # The learning rate falls linearly over this many epochs (to 2% of lr; 0 = constant). A refit for fewer
    # epochs keeps it, so it retraces the tuning run's schedule up to the chosen epoch.
    decay_epochs: int = 6
    negatives: int = 4096  # shared uniform negatives per step (sampled softmax); 0 = full softmax
    max_valid_cases: int = 10_000  # validation is a deterministic sample when larger, to keep epochs cheap
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads for torch; 0 keeps torch's default (one per core)
    # Models published, trained with seeds seed, seed + 1, ... and served as their mean: two rank better than
    # one (+0.7 HR@20 points on validation) for one more refit's time and twice the serving compute.
    members: int = 2


def cooccurrence_embeddings(
    windows: Sequence[Window], n_items: int, dim: int, window: int = 3
) -> torch.Tensor:
    """Unit item vectors from a truncated SVD of the log co-occurrence of items a few events apart.

    Items that appear in the same contexts start close together, so the attention model spends its
    epochs on order and intent instead of first discovering which of ~40k items are related.
    """
    rows, cols = [], []
    for items, _, _ in windows:
        for distance in range(1, window + 1):
            rows += items[:-distance]
            cols += items[distance:]
    pairs = sp.coo_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_items + 1, n_items + 1)
    )
    counts = (pairs + pairs.T).tocsr()[1:, 1:]
    counts.data = np.log1p(counts.data)
    left, strength, _ = svds(counts, k=min(dim, n_items - 2), random_state=0)
    vectors = np.zeros((n_items, dim), dtype=np.float32)
    vectors[:, : left.shape[1]] = left * np.sqrt(strength)
    return torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class Window(NamedTuple):
    """A stretch of one session: its events, plus the one after them that `cooccurrence_embeddings` reads
    too, and what each of the first len(targets) events predicts (-1: nothing)."""

    items: list[int]
    types: list[int]
    targets: list[int]


def training_windows(sessions: Sequence[Session], vocab: ItemVocab, max_len: int) -> list[Window]:
    """Sessions cut into windows of max_len predicting events, so every event of a long history is an input
    once per objective: every event predicts the next one, and in sessions that know each event's next
    basket (`Session.next_basket`) a second window over the same events predicts that."""
    encoded = [(session, *encode_history(session.items, session.types, vocab)) for session in sessions]
    windows = [
        window
        for _, items, types in encoded
        for window in _cut(items, types, [item - 1 for item in items[1:]], max_len)
    ]
    for session, items, types in encoded:
        if session.next_basket is not None:
            wanted = (t for t, item in zip(session.next_basket, session.items, strict=True) if item in vocab)
            targets = [-1 if t is None or (i := vocab.get(t)) is None else i for t in wanted]
            windows += _cut(items, types, targets, max_len)
    return windows


def _cut(items: list[int], types: list[int], targets: list[int], max_len: int) -> list[Window]:
    """Windows of up to max_len events with at least one target; the events after the last target are left
    out, since they teach nothing."""
    last = next((i for i in range(len(targets) - 1, -1, -1) if targets[i] >= 0), -1)
    targets = targets[: last + 1]
    windows = []
    for start in range(0, len(targets), max_len):
        predicted = targets[start : start + max_len]
        if any(t >= 0 for t in predicted):
            context = slice(start, start + max_len + 1)
            windows.append(Window(items[context], types[context], predicted))
    return windows


def window_chunks(
    lengths: Sequence[int], batch_size: int, step_targets: int, rng: random.Random
) -> list[list[int]]:
    """Window indices grouped into steps of similar length (sessions are short, so padding would
    dominate), at most `batch_size` windows and `step_targets` predicting events each; shuffled."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    chunks: list[list[int]] = [[]]
    targets = 0
    for index in order:
        if chunks[-1] and (len(chunks[-1]) == batch_size or targets + lengths[index] > step_targets):
            chunks.append([])
            targets = 0
        chunks[-1].append(index)
        targets += lengths[index]
    rng.shuffle(chunks)
    return chunks


def training_batches(
    windows: Sequence[Window], chunks: Sequence[list[int]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(items, types, targets) tensors per step: left-padded inputs and their targets (-1 = none)."""
    for chunk in chunks:
        rows = [windows[i] for i in chunk]
        length = max(len(w.targets) for w in rows)
        items = left_pad([w.items[: len(w.targets)] for w in rows], length, PAD)
        types = left_pad([w.types[: len(w.targets)] for w in rows], length, PAD)
        targets = left_pad([w.targets for w in rows], length, -1)
        yield items, types, targets


def candidates(
    targets: torch.Tensor, inputs: torch.Tensor, config: TrainConfig, item_share: torch.Tensor
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Items the softmax runs over this step and the log-probability that each one is in that sample
    (for the logQ correction); (None, None) means a full softmax.

    The sample is the batch's targets, its input items (their repeat bonus must meet the softmax) and
    shared uniform negatives. Input items are always in it (probability 1) while any other item is there
    only by chance, so without the correction the model would learn that seen items compete far more
    often than they do in the full softmax it is evaluated with.
    """
    n_items = len(item_share)
    if not 0 < config.negatives < n_items:
        return None, None
    real_targets = targets[targets >= 0]
    seen = inputs[inputs != PAD] - 1
    negatives = torch.randint(0, n_items, (config.negatives,), device=targets.device)
    picked = torch.unique(torch.cat([real_targets, seen, negatives]))
    # P(item in sample) = 1 - P(missed by every target draw) * P(missed by every uniform draw)
    log_missed = len(real_targets) * torch.log1p(-item_share[picked].clamp(max=1 - 1e-6)) + (
        config.negatives * np.log1p(-1 / n_items)
    )
    log_q = torch.log(-torch.expm1(log_missed))
    log_q[torch.isin(picked, seen)] = 0.0
    return picked, log_q


REPEAT_SCALES = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


@torch.no_grad()
def validation_scores(
    model: SASRec,
    cases: Sequence[Case],
    vocab: ItemVocab,
    device: torch.device,
    repeat_scales: Sequence[float] = (1.0,),
) -> dict[float, dict[str, float]]:
    """Full-ranking HR@20 / MRR@20 over all items for each repeat-bonus weight; cases with unknown targets
    count as misses. A weight moves only the scores of each case's own session items, so the product with
    the item table is computed once per chunk of cases and every weight re-ranks against it."""
    encoded = encode_sessions(model, [encode_history(c.prefix, c.prefix_types, vocab) for c in cases], device)
    targets = np.array([UNKNOWN_TARGET if (i := vocab.get(c.target)) is None else i for c in cases])
    items = model.item_vectors().cpu().numpy()
    ranks: dict[float, list[np.ndarray]] = {scale: [] for scale in repeat_scales}
    for start in range(0, len(cases), 2048):
        chunk = encoded[start : start + 2048]
        similarity = chunk.vectors @ items.T
        rows, columns, bonuses = chunk.repeat_entries()
        for scale in repeat_scales:
            ranks[scale].append(
                boosted_target_ranks(
                    similarity, rows, columns, bonuses * scale, targets[start : start + 2048]
                )
            )
    results = {}
    for scale, parts in ranks.items():
        rank = np.concatenate(parts)
        hit = rank <= 20
        results[scale] = {"hr@20": float(hit.mean()), "mrr@20": float((hit / rank).mean())}
    return results


def best_repeat_scale(results: dict[float, dict[str, float]]) -> float:
    """The serving weight of the repeat bonus: the one with the best validation HR@20 + MRR@20.

    The bonus is learned jointly with the softmax, but the sampled softmax and dropout leave it
    under-weighted against the similarity term (a third of targets or more are repeats), so one scalar
    is tuned after training, like a temperature. Epochs are chosen at that weight too: the epoch that
    serves best is not always the one that is best at x1.
    """
    return max(results, key=lambda s: results[s]["hr@20"] + results[s]["mrr@20"])


def train(
    train_sessions: Sequence[Session],
    valid_cases: Sequence[Case],
    vocab: ItemVocab,
    model_config: SASRecConfig,
    config: TrainConfig,
    checkpoint: Path | None = None,
) -> tuple[SASRec, dict[str, object]]:
    """Train with early stopping; return the best model on validation and the training history."""
    set_seed(config.seed)
    if valid_cases:  # the repeat weight is calibrated on validation, so training scores it at x1
        model_config = replace(model_config, repeat_scale=1.0)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    model = SASRec(model_config)
    windows = training_windows(train_sessions, vocab, model_config.max_len)
    with torch.no_grad():  # item embeddings start from session co-occurrence (see cooccurrence_embeddings)
        init = cooccurrence_embeddings(windows, len(vocab), model_config.dim)
        model.item_emb.weight[1:] = init * model.item_emb.weight[1:].norm(dim=-1).mean()
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    lengths = [len(w.targets) for w in windows]
    # Chunks follow window lengths, so every epoch has this many steps whatever the shuffle.
    steps_per_epoch = len(
        window_chunks(lengths, config.batch_size, config.step_targets, random.Random(config.seed))
    )
    decay_steps = config.decay_epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(1.0 - step / decay_steps, 0.02) if decay_steps else 1.0
    )
    target_counts = torch.bincount(
        torch.tensor([t for w in windows for t in w.targets if t >= 0], dtype=torch.long),
        minlength=len(vocab),
    )
    item_share = (target_counts / target_counts.sum().clamp(min=1)).to(device)
    valid = list(valid_cases)
    if len(valid) > config.max_valid_cases:
        valid = random.Random(config.seed).sample(valid, config.max_valid_cases)
    rng = random.Random(config.seed)
    best_served, best_epoch, best_state, stale, history = -1.0, 0, None, 0, []
    calibration: dict[float, dict[str, float]] = {}  # the chosen epoch's validation at every repeat weight
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        total, steps = 0.0, 0
        progress = tqdm(
            training_batches(windows, window_chunks(lengths, config.batch_size, config.step_targets, rng)),
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="batch",
            leave=False,
        )
        for items, types, targets in progress:
            targets = targets.to(device)
            picked, log_q = candidates(targets, items, config, item_share)
            loss = model.loss(items.to(device), types.to(device), targets, picked, log_q)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total, steps = total + loss.item(), steps + 1
            progress.set_postfix(loss=f"{total / steps:.3f}")
        record: dict[str, float] = {"epoch": epoch, "loss": total / max(steps, 1)}
        scales: dict[float, dict[str, float]] = {}
        if valid:
            scales = validation_scores(model, valid, vocab, device, REPEAT_SCALES)
            served = scales[best_repeat_scale(scales)]
            record |= {**scales[1.0], "served": served["hr@20"] + served["mrr@20"]}
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        tqdm.write(
            f"epoch {epoch}: loss {record['loss']:.4f}"
            + (
                f"  valid HR@20 {record['hr@20']:.4f}  MRR@20 {record['mrr@20']:.4f}"
                f"  served HR@20+MRR@20 {record['served']:.4f}"
                if valid
                else ""
            )
            + f"  ({record['seconds']:.0f}s)"
        )
        # Without validation cases (a refit on all training data) the last epoch is the model.
        if not valid or record["served"] > best_served:
            best_served, best_epoch, stale = record.get("served", best_served), epoch, 0
            calibration = scales
            best_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            if checkpoint is not None:
                torch.save(
                    {"model": best_state, "config": model_config.to_dict(), "epoch": epoch}, checkpoint
                )
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    if calibration:
        model.config.repeat_scale = best_repeat_scale(calibration)
        best = calibration[model.config.repeat_scale]
        tqdm.write(
            f"repeat bonus x{model.config.repeat_scale:g}: valid HR@20 {best['hr@20']:.4f}  "
            f"MRR@20 {best['mrr@20']:.4f}"
        )
    return model, {
        "history": history,
        "best_epoch": best_epoch,
        "best_valid_served": best_served,
        "repeat_scale": model.config.repeat_scale,
        "repeat_scale_validation": {str(scale): scores for scale, scores in calibration.items()},
        "train_seconds": time.perf_counter() - started,
        "train_windows": len(windows),
        "train_config": asdict(config),
    }


MIN_ITEMS = 3  # the co-occurrence initialisation needs a matrix of rank >= 1 (k < items - 1)


def check_trainable(dataset: Dataset, items: int) -> None:
    """A clear error for data too small to learn from, instead of one from deep inside the training."""
    sequences = sum(len(session.items) >= 2 for session in dataset.train)
    if items < MIN_ITEMS or sequences == 0 or not dataset.valid:
        raise ValueError(
            f"{dataset.name}: {len(dataset.train)} training sequences ({sequences} with two or more events), "
            f"{items} distinct items and {len(dataset.valid)} validation cases are too few to train on: "
            f"training needs sequences of two or more events, at least {MIN_ITEMS} items, and later events "
            "of known items to validate on (check the bad-row counts logged when the file was read)"
        )


def train_artifact(
    dataset: Dataset,
    out_root: Path,
    model_config: SASRecConfig | None = None,
    config: TrainConfig | None = None,
    refit_on: Dataset | None = None,
) -> Path:
    """Train on a dataset and publish a complete, versioned artifact under out_root; return its directory.

    Validation picks the number of epochs and the repeat weight. With `refit_on` (the same data with the
    validation part folded back into training) fresh models are then trained on it for that many epochs and
    published, so the served model has seen the most recent sessions, which a held-out validation set
    withholds. With `config.members` > 1 the published model is that many such models, seeds counted up
    from `config.seed`, served as their mean (`SASRecEnsemble`); without a refit the validated model is the
    first of them.
    """
    from model.recommender import write_artifact  # the artifact format lives with its reader

    config = config or TrainConfig()
    model_config = model_config or SASRecConfig(n_items=0)
    out_root.mkdir(parents=True, exist_ok=True)
    checkpoint = out_root / "checkpoint.pt"
    vocab = ItemVocab.from_sequences(session.items for session in dataset.train)
    check_trainable(dataset, len(vocab))
    model, report = train(
        dataset.train, dataset.valid, vocab, replace(model_config, n_items=len(vocab)), config, checkpoint
    )
    epochs = int(report["best_epoch"])
    members, refits = ([], []) if refit_on is not None else ([model], [])
    if refit_on is not None:
        dataset, vocab = refit_on, ItemVocab.from_sequences(session.items for session in refit_on.train)
    served_config = replace(model.config, n_items=len(vocab))  # with the calibrated repeat weight
    while len(members) < config.members:
        seed = config.seed + len(members)
        tqdm.write(
            f"{'refit' if refit_on is not None else 'member'} {len(members) + 1} of {config.members}: "
            f"{epochs} epochs on {len(dataset.train):,} sessions (seed {seed})"
        )
        member, member_report = train(
            dataset.train, [], vocab, served_config, replace(config, epochs=epochs, seed=seed)
        )
        members.append(member)
        refits.append(member_report)
    if refits:
        report = {
            **report,
            "refit" if refit_on is not None else "members": refits,
            "train_seconds": report["train_seconds"] + sum(r["train_seconds"] for r in refits),
        }
    report["train_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    version_dir = write_artifact(out_root, session_model(members), vocab, dataset, report)
    checkpoint.unlink(missing_ok=True)
    print(json.dumps({"version": version_dir.name, "best_valid_served": report["best_valid_served"]}))
    return version_dir
