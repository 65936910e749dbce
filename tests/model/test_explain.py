"""Explanations: reasons present and well-formed, their JSON shape, and faithfulness of the attribution."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.complement.cli import faithfulness
from model.data import Dataset
from model.explain import ExplainedItem, Reasons, explain_items, leave_one_out
from model.recommender import Recommender


@pytest.fixture(scope="module")
def rec(artifact_root: Path) -> Recommender:
    return Recommender.load(artifact_root)


def test_every_item_is_explained(rec: Recommender, online_retail_sample: Dataset) -> None:
    cases = online_retail_sample.test[:8]
    histories = [list(case.prefix) for case in cases] + [[], ["no-such-item"]]
    types = [list(case.prefix_types) for case in cases] + [[], ["view"]]
    recommendations = rec.recommend_batch(histories, types, k=5)
    answers = explain_items(rec, histories, types, recommendations)
    assert [len(a) for a in answers] == [len(r) for r in recommendations]
    for history, answer in zip(histories, answers, strict=True):
        for item in answer:
            assert item.explanation and item.reasons.code in {
                "personalized",
                "complement",
                "repeat",
                "popular",
                "cold_start",
            }
            assert all(d.item_id in history and d.weight > 0 for d in item.reasons.drivers)
            assert (item.reasons.code == "repeat") == (item.item_id in history and rec.known(history))
            assert ExplainedItem.model_validate_json(item.model_dump_json()) == item
    assert all(
        item.reasons.code == "popular" and not item.reasons.drivers for item in answers[-1] + answers[-2]
    )
    assert any(item.reasons.drivers for answer in answers[:-2] for item in answer)


def test_reason_json_shape() -> None:
    reasons = Reasons.model_validate(
        {
            "code": "complement",
            "evidence": [{"item_id": "a", "with_item": "b", "pair_baskets": 3, "lift": 2.5}],
        }
    )
    assert reasons.model_dump() == {
        "code": "complement",
        "drivers": [],
        "evidence": [{"item_id": "a", "with_item": "b", "pair_baskets": 3, "lift": 2.5}],
    }
    with pytest.raises(ValueError):
        Reasons.model_validate({"code": "because"})


def test_leave_one_out_matches_single_encodes(rec: Recommender, online_retail_sample: Dataset) -> None:
    case = next(c for c in online_retail_sample.test if len({i for i in c.prefix if i in rec.vocab}) >= 3)
    history, types = list(case.prefix), list(case.prefix_types)
    target = rec.recommend(history, k=1, types=types)[0][0]
    ((drops,),) = leave_one_out(rec, [history], [types], [[target]])
    position, drop = drops[0]
    row = rec.vocab.get(target)
    full = rec.encode([history], [types]).scores(rec.item_vectors)[0, row]
    without = rec.encode(
        [history[:position] + history[position + 1 :]], [types[:position] + types[position + 1 :]]
    ).scores(rec.item_vectors)[0, row]
    assert drop == pytest.approx(float(full - without), abs=1e-4)


def test_strongest_reason_is_faithful(rec: Recommender, online_retail_sample: Dataset) -> None:
    cases = online_retail_sample.test[:200]
    result = faithfulness(rec, [list(c.prefix) for c in cases], [list(c.prefix_types) for c in cases], seed=0)
    assert result["cases"] >= 20
    assert result["strongest_beats_random"] > 0.6


def test_leave_one_out_with_repeated_events_matches_single_encodes(
    rec: Recommender, online_retail_sample: Dataset
) -> None:
    """Every attributed position, including events repeated in the history (their variants are
    encoded once) and ids the model does not know (never attributed)."""
    case = next(c for c in online_retail_sample.test if len({i for i in c.prefix if i in rec.vocab}) >= 3)
    base, base_types = list(case.prefix)[-4:], list(case.prefix_types)[-4:]
    history = [base[0], base[0], "no-such-item", *base, base[-1]]
    types = [base_types[0], base_types[0], "view", *base_types, base_types[-1]]
    targets = [item for item, _ in rec.recommend(history, k=3, types=types)]
    (per_item,) = leave_one_out(rec, [history, history], [types, types], [targets, targets])[:1]
    rows = [rec.vocab.get(target) for target in targets]
    full = rec.encode([history], [types]).scores(rec.item_vectors)[0, rows]
    for drops in per_item:
        assert sorted(position for position, _ in drops) == [
            p for p, i in enumerate(history) if i in rec.vocab
        ]
        assert [d for _, d in drops] == sorted((d for _, d in drops), reverse=True)
    for column, drops in enumerate(per_item):
        for position, drop in drops:
            without = rec.encode(
                [history[:position] + history[position + 1 :]], [types[:position] + types[position + 1 :]]
            ).scores(rec.item_vectors)[0, rows[column]]
            assert drop == pytest.approx(float(full[column] - without), abs=1e-4)
    assert dict(per_item[0])[0] == dict(per_item[0])[1]  # the two identical events drop the score alike
