"""The SASRec encoder and its training loop: masking, padding, loss, batching."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from model.data import Session, views
from model.sasrec.encode import SharedRows, encode_sessions, encode_without_one, left_pad
from model.sasrec.model import PAD, SASRec, SASRecConfig, SASRecEnsemble, SoftmaxCrossEntropy, session_model
from model.sasrec.train import (
    TrainConfig,
    Window,
    candidates,
    encode_history,
    train,
    training_batches,
    training_windows,
    window_chunks,
)
from model.vocab import ItemVocab


@pytest.fixture
def model() -> SASRec:
    torch.manual_seed(0)
    return SASRec(SASRecConfig(n_items=30, max_len=8, dim=16, n_heads=2, dropout=0.0)).eval()


def test_no_future_leak(model: SASRec) -> None:
    items = torch.tensor([[PAD, 3, 5, 7, 9]])
    types = torch.tensor([[PAD, 1, 1, 1, 1]])
    changed = items.clone()
    changed[0, -1] = 11
    with torch.no_grad():
        before, after = model.hidden(items, types), model.hidden(changed, types)
    # Earlier positions must not see the last event; the last one must.
    torch.testing.assert_close(before[0, :-1], after[0, :-1])
    assert not torch.allclose(before[0, -1], after[0, -1])


def test_a_position_sees_the_same_thing_in_training_and_at_inference(model: SASRec) -> None:
    """Training reads every position of a window; inference reads the last one of a shorter history."""
    window = torch.tensor([[3, 5, 7, 9]])
    history = torch.tensor([[PAD, PAD, 3, 5]])
    with torch.no_grad():
        in_training = model.hidden(window, torch.ones_like(window))[0, 1]
        at_inference = model.hidden(history, (history != PAD).long())[0, -1]
    torch.testing.assert_close(in_training, at_inference)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_the_rows_asked_for_alone_are_those_rows_of_the_full_pass(n_layers: int) -> None:
    """Serving runs the last block for the rows it reads only; they must be what the full pass says there."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=30, max_len=8, dim=16, n_layers=n_layers, dropout=0.0)).eval()
    items = torch.tensor([[PAD, PAD, 3, 5, 7], [4, 9, 9, 2, 6], [PAD, PAD, PAD, PAD, 8]])
    types = torch.where(items != PAD, torch.tensor([[1, 2, 1, 3, 4]]), PAD)
    rows = torch.tensor([[4, 2], [1, 4], [4, 4]])
    with torch.no_grad():
        picked = model.hidden_at(items, types, *model.left_padded(items), rows)
        full = model.hidden(items, types)
    assert picked.shape == (3, 2, 16)
    torch.testing.assert_close(picked, full.gather(1, rows[:, :, None].expand(-1, -1, 16)))


def test_left_padding_does_not_change_the_session_vector(model: SASRec) -> None:
    short = torch.tensor([[3, 5, 7]])
    padded = torch.tensor([[PAD, PAD, PAD, 3, 5, 7]])
    with torch.no_grad():
        a, a_bonus = model.encode_last(short, torch.ones_like(short))
        b, b_bonus = model.encode_last(padded, (padded != PAD).long())
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a_bonus, b_bonus[:, 3:])
    assert (b_bonus[:, :3] == 0).all() and (a_bonus > 0).all()
    assert torch.isfinite(model.hidden(padded, (padded != PAD).long())).all()


def test_many_histories_batched_by_length_keep_their_order(model: SASRec) -> None:
    histories = [([3, 5, 7, 3], [1, 1, 2, 1]), ([4], [1]), ([9, 2, 8, 6, 1, 3, 2], [1] * 7), ([6, 6], [1, 3])]
    one_batch = encode_sessions(model, histories, torch.device("cpu"))
    by_length = encode_sessions(model, histories, torch.device("cpu"), batch_size=2)
    np.testing.assert_allclose(by_length.vectors, one_batch.vectors, rtol=1e-5, atol=1e-6)
    assert [set(r) for r in by_length.repeats] == [{2, 4, 6}, {3}, {0, 1, 2, 5, 7, 8}, {5}]
    for ours, theirs in zip(by_length.repeats, one_batch.repeats, strict=True):
        assert ours == pytest.approx(theirs)


def test_an_ensemble_scores_every_item_by_its_members_mean_score(model: SASRec) -> None:
    torch.manual_seed(1)
    other = SASRec(model.config).eval()
    ensemble = SASRecEnsemble([model, other])
    histories = [([3, 5, 7, 3], [1, 1, 2, 1]), ([4], [1]), ([9, 2, 8, 6, 1], [1] * 5)]
    cpu = torch.device("cpu")
    with torch.no_grad():
        members = [
            encode_sessions(m, histories, cpu).scores(m.item_vectors().numpy()) for m in (model, other)
        ]
        served = encode_sessions(ensemble, histories, cpu)
        scores = served.scores(ensemble.item_vectors().numpy())
    assert served.vectors.shape == (3, 32) and ensemble.vector_dim == 32
    np.testing.assert_allclose(scores, (members[0] + members[1]) / 2, rtol=1e-5, atol=1e-5)
    assert not np.allclose(scores, members[0], atol=1e-3)


def test_ensemble_members_must_share_their_vocabulary(model: SASRec) -> None:
    other = SASRec(SASRecConfig(n_items=31, max_len=8, dim=16, n_heads=2))
    with pytest.raises(ValueError, match="vocabulary"):
        SASRecEnsemble([model, other])


def test_event_type_changes_the_session_vector(model: SASRec) -> None:
    items = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        viewed, _ = model.encode_last(items, torch.tensor([[1, 1, 1]]))
        bought, _ = model.encode_last(items, torch.tensor([[1, 1, 4]]))
    assert not torch.allclose(viewed, bought)


def test_encode_history_drops_unknown_items_and_keeps_types() -> None:
    vocab = ItemVocab(["a", "b"])
    assert encode_history(["a", "zzz", "b"], ["view", "view", "purchase"], vocab) == ([1, 2], [1, 4])
    assert encode_history(["zzz"], None, vocab) == ([], [])


def test_long_sessions_become_windows_that_cover_every_target() -> None:
    vocab = ItemVocab([str(i) for i in range(30)])
    windows = training_windows([views([str(i) for i in range(25)])], vocab, max_len=10)
    assert sorted(t for window in windows for t in window.targets) == list(range(1, 25))
    for window in windows:  # each event predicts the one after it, also across a window's end
        assert len(window.targets) <= 10
        assert window.targets == [item - 1 for item in window.items[1 : len(window.targets) + 1]]


def test_purchase_histories_also_predict_the_next_baskets_new_products() -> None:
    vocab = ItemVocab(["a", "b", "c", "d"])
    session = Session(
        items=("a", "zzz", "b", "c", "d"),
        types=("purchase",) * 5,
        next_basket=("c", "d", "zzz", "d", None),  # zzz's own line is dropped; an unknown target is none
    )
    next_event, next_basket = training_windows([session], vocab, max_len=10)
    assert next_event == Window([1, 2, 3, 4], [4] * 4, [1, 2, 3])
    # The last line has no next basket, so the window ends before it.
    assert next_basket == Window([1, 2, 3, 4], [4] * 4, [2, -1, 3])
    assert training_windows([Session(("a", "b"), ("purchase",) * 2, (None, None))], vocab, 10) == [
        Window([1, 2], [4, 4], [1])
    ]


def test_batches_hold_every_window_once_with_aligned_targets() -> None:
    windows = [
        Window([1, 2, 3], [1, 1, 1], [1, 2]),
        Window([4, 5], [1, 1], [4]),
        Window([6, 7, 8, 9], [1, 1, 1, 1], [6, -1, 8]),
    ]
    seen = []
    chunks = window_chunks([len(w.targets) for w in windows], 2, 100, random.Random(0))
    for items, _, targets in training_batches(windows, chunks):
        for row_items, row_targets in zip(items.tolist(), targets.tolist(), strict=True):
            seen.append([(i, t) for i, t in zip(row_items, row_targets, strict=True) if i != PAD])
    assert sorted(seen) == [[(1, 1), (2, 2)], [(4, 4)], [(6, 6), (7, -1), (8, 8)]]


def test_steps_are_capped_by_predicted_events_and_windows() -> None:
    lengths = [1] * 8 + [10] * 6  # predicted events per window
    chunks = window_chunks(lengths, batch_size=4, step_targets=25, rng=random.Random(0))
    assert sorted(i for chunk in chunks for i in chunk) == list(range(14))
    assert all(len(chunk) <= 4 for chunk in chunks)
    assert all(sum(lengths[i] for i in chunk) <= 25 for chunk in chunks)
    assert sorted(len(chunk) for chunk in chunks if lengths[chunk[0]] == 10) == [2, 2, 2]


def test_a_window_longer_than_the_cap_still_gets_a_step() -> None:
    assert window_chunks([50, 3], batch_size=8, step_targets=10, rng=random.Random(0)) in (
        [[1], [0]],
        [[0], [1]],
    )


def test_sampled_softmax_candidates_contain_every_target_with_their_log_q() -> None:
    targets = torch.tensor([[-1, 4, 9], [17, -1, 2]])
    share = torch.full((100,), 0.01)
    share[4] = 0.5
    inputs = torch.tensor([[0, 31, 32], [33, 0, 34]])  # shifted by one: items 30, 31, 32, 33
    picked, log_q = candidates(targets, inputs, TrainConfig(negatives=5), share)
    assert picked is not None and log_q is not None
    assert set(targets[targets >= 0].tolist()) | {30, 31, 32, 33} <= set(picked.tolist())
    assert picked.tolist() == sorted(set(picked.tolist()))
    # Seen items are always in the sample; any other item is there by chance: 4 target draws by share
    # and 5 uniform draws over 100 items.
    chance = 1 - (1 - share[picked]) ** 4 * (1 - 1 / 100) ** 5
    seen = torch.isin(picked, torch.tensor([30, 31, 32, 33]))
    torch.testing.assert_close(log_q[seen], torch.zeros(int(seen.sum())))
    torch.testing.assert_close(log_q[~seen], chance[~seen].log())
    unseen = picked[~seen].tolist()
    assert log_q[picked.tolist().index(4)] == log_q[~seen].max() and 4 in unseen
    assert candidates(targets, inputs, TrainConfig(negatives=0), share) == (None, None)


def test_sampled_and_full_softmax_agree_when_every_item_is_a_candidate(model: SASRec) -> None:
    items = torch.tensor([[PAD, 3, 5, 3], [2, 4, 6, 8]])
    types = (items != PAD).long()
    targets = torch.tensor([[-1, 4, 2, 9], [3, 5, 7, 1]])
    with torch.no_grad():
        full = model.loss(items, types, targets)
        sampled = model.loss(items, types, targets, torch.arange(30))
    torch.testing.assert_close(full, sampled)


def test_softmax_cross_entropy_has_torchs_value_and_gradient() -> None:
    torch.manual_seed(0)
    logits = (torch.randn(7, 11) * 5).requires_grad_()
    target = torch.tensor([0, 3, 10, 3, 5, 9, 1])
    expected = torch.nn.functional.cross_entropy(logits, target)
    (expected_gradient,) = torch.autograd.grad(expected * 3, logits)
    ours = SoftmaxCrossEntropy.apply(logits, target)
    (gradient,) = torch.autograd.grad(ours * 3, logits)
    torch.testing.assert_close(ours, expected)
    torch.testing.assert_close(gradient, expected_gradient)


@pytest.mark.parametrize("negatives", [0, 8])
def test_training_learns_a_deterministic_pattern(negatives: int) -> None:
    """Sessions follow a -> b -> c; a trained model must rank the true next item first."""
    chains = [["a", "b", "c", "d"], ["e", "f", "g", "h"], ["i", "j", "k", "l"]]
    sessions: list[Session] = [views(chain) for chain in chains for _ in range(30)]
    vocab = ItemVocab.from_sequences(s.items for s in sessions)
    from model.data import Case

    valid = [Case(tuple(chain[:2]), ("view", "view"), chain[2]) for chain in chains]
    _, report = train(
        sessions,
        valid,
        vocab,
        SASRecConfig(n_items=len(vocab), max_len=4, dim=16, n_heads=1, n_layers=1, dropout=0.0),
        TrainConfig(epochs=12, batch_size=16, lr=1e-2, negatives=negatives, patience=12),
    )
    history = report["history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert report["best_valid_served"] == pytest.approx(2.0)  # HR@20 1 + MRR@20 1


def test_cooccurrence_init_places_items_of_the_same_sessions_together() -> None:
    from model.sasrec.train import cooccurrence_embeddings

    # Two disjoint groups of items that only ever appear with each other.
    windows = [Window([1, 2, 3, 1, 2], [1] * 5, []), Window([4, 5, 6, 4, 5], [1] * 5, [])] * 20
    vectors = cooccurrence_embeddings(windows, n_items=6, dim=2, window=2)
    similarity = vectors @ vectors.T
    within = similarity[0, 1]
    across = similarity[0, 4]
    assert within > across + 0.5


def test_repeat_scale_is_calibrated_to_the_best_validation_weight() -> None:
    """Shoppers who go back and forth between two items: the serving weight must favour repeats."""
    from model.data import Case
    from model.sasrec.train import REPEAT_SCALES, validation_scores

    pairs = [(f"a{i}", f"b{i}") for i in range(12)]
    sessions = [views([a, b, a, b, a, b]) for a, b in pairs for _ in range(4)]
    vocab = ItemVocab.from_sequences(s.items for s in sessions)
    valid = [Case((a, b), ("view", "view"), a) for a, b in pairs]
    model, report = train(
        sessions,
        valid,
        vocab,
        SASRecConfig(n_items=len(vocab), max_len=6, dim=8, n_heads=1, n_layers=1, dropout=0.0),
        TrainConfig(epochs=2, batch_size=16, negatives=0, patience=2),
    )
    results = {float(scale): scores for scale, scores in report["repeat_scale_validation"].items()}
    assert set(results) == set(REPEAT_SCALES)
    best = max(results, key=lambda s: results[s]["hr@20"] + results[s]["mrr@20"])
    assert model.config.repeat_scale == best
    # The calibration was read off the chosen epoch's validation: the returned weights must reproduce it.
    served_scale, model.config.repeat_scale = model.config.repeat_scale, 1.0
    fresh = validation_scores(model, valid, vocab, torch.device("cpu"), REPEAT_SCALES)
    model.config.repeat_scale = served_scale
    assert {scale: pytest.approx(scores) for scale, scores in fresh.items()} == results
    assert report["best_valid_served"] == pytest.approx(results[best]["hr@20"] + results[best]["mrr@20"])


def test_left_pad_keeps_the_latest_values_right_aligned() -> None:
    padded = left_pad([[1, 2, 3], [], [4, 5, 6, 7, 8], [9]], 4, 0)
    assert padded.tolist() == [[0, 1, 2, 3], [0, 0, 0, 0], [5, 6, 7, 8], [0, 0, 0, 9]]
    assert left_pad([[1, 2]], 0, 0).shape == (1, 0)


def test_shared_rows_lay_a_history_out_before_its_variants_own_events() -> None:
    """History A (4 events) without its 2nd and without its last event; history B (2) without its 1st."""
    shared = SharedRows.build([([11, 12, 13, 14], [1, 1, 2, 1]), ([21, 22], [1, 3])], [[1, 3], [0]])
    assert shared.items.tolist() == [[11, 12, 13, 14, 13, 14], [21, 22, 22, PAD, PAD, PAD]]
    assert shared.types.tolist() == [[1, 1, 2, 1, 2, 1], [1, 3, 3, PAD, PAD, PAD]]
    # A variant's events sit one position earlier than in the history: the dropped one is gone.
    assert shared.positions[0].tolist() == [0, 1, 2, 3, 1, 2]
    assert shared.positions[1, :3].tolist() == [0, 1, 0]
    # Ends: the history's last row, then each variant's; A without its last event ends on A's third row.
    assert shared.ends.tolist() == [[3, 5, 2], [1, 2, 1]]
    assert [column.tolist() for column in shared.sequences] == [[0, 1, 0, 0, 1], [0, 0, 1, 2, 1]]
    seen = [[np.flatnonzero(row).tolist() for row in visible] for visible in shared.visible]
    assert seen[0] == [[0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [0, 4], [0, 4, 5]]
    assert seen[1] == [[0], [0, 1], [2], [3], [4], [5]]  # padding rows see themselves only


@pytest.mark.parametrize(("layers", "members"), [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_variants_sharing_their_sources_rows_equal_variants_encoded_alone(layers: int, members: int) -> None:
    """A history and its leave-one-out variants encoded as one input of shared rows (`encode_without_one`,
    `SharedRows`) give what encoding each of them alone gives: vectors and repeat bonuses."""
    torch.manual_seed(layers * 10 + members)
    config = SASRecConfig(n_items=40, max_len=30, dim=16, n_layers=layers, n_heads=2, dropout=0.0)
    model = session_model([SASRec(config) for _ in range(members)]).eval()
    with torch.no_grad():  # a trained model's repeat parameters are not zero; make them matter here
        for member in getattr(model, "members", [model]):
            member.repeat_distance.normal_()
            member.repeat_type.normal_()
    generator = random.Random(layers + members)
    histories = [
        # Few item ids, so that items repeat; lengths up to the window, at it, and past it (encoded whole).
        ([generator.randint(1, 12) for _ in range(n)], [generator.randint(1, 4) for _ in range(n)])
        for n in (1, 2, 3, 7, 19, 20, 25, 30, 30, 31, 35)
    ]
    variants = [  # every event of the short histories, the last 6 (and a middle one) of the others
        (source, j)
        for source, (items, _) in enumerate(histories)
        for j in range(len(items))
        if len(items) <= 7 or j >= len(items) - 6 or j == len(items) // 2
    ]
    generator.shuffle(variants)  # in no particular order
    device = torch.device("cpu")
    sources, without = encode_without_one(model, histories, variants, device, batch_size=4)
    alone = encode_sessions(model, histories, device)
    dropped = [
        (histories[s][0][:j] + histories[s][0][j + 1 :], histories[s][1][:j] + histories[s][1][j + 1 :])
        for s, j in variants
    ]
    expected = encode_sessions(model, [d for d in dropped if d[0]], device)
    np.testing.assert_allclose(sources.vectors, alone.vectors, atol=1e-5)
    nonempty = [n for n, d in enumerate(dropped) if d[0]]
    np.testing.assert_allclose(without.vectors[nonempty], expected.vectors, atol=1e-5)
    assert not without.vectors[[n for n, d in enumerate(dropped) if not d[0]]].any()
    for got, want in zip([without.repeats[n] for n in nonempty], expected.repeats, strict=True):
        assert got.keys() == want.keys()
        np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], atol=1e-5)
