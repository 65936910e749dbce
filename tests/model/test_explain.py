"""Explanations: reasons present and well-formed, their JSON shape, and faithfulness of the attribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic_core import to_json

from model.complement.cli import faithfulness, without
from model.data import Dataset
from model.explain import Attribution, Driver, Evidence, Reasons, drivers_from, explain_items
from model.recommender import Recommender


@pytest.fixture(scope="module")
def rec(artifact_root: Path) -> Recommender:
    return Recommender.load(artifact_root)


def test_every_item_is_explained(rec: Recommender, online_retail_sample: Dataset) -> None:
    cases = online_retail_sample.test[:8]
    histories = [list(case.prefix) for case in cases] + [[], ["no-such-item"]]
    types = [list(case.prefix_types) for case in cases] + [[], ["view"]]
    recommendations = rec.recommend_batch(histories, types, k=5)
    answers = explain_items(rec, rec.attribute(histories, types), recommendations)
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
            assert set(json.loads(to_json(item))) == {"item_id", "score", "reasons", "explanation"}
    assert all(
        item.reasons.code == "popular" and not item.reasons.drivers for item in answers[-1] + answers[-2]
    )
    assert any(item.reasons.drivers for answer in answers[:-2] for item in answer)


def test_reason_json_shape() -> None:
    reasons = Reasons("complement", [Driver("b", "view", 0.5)], [Evidence("a", "b", 3, 2.5, "co_purchase")])
    assert json.loads(to_json(reasons)) == {
        "code": "complement",
        "drivers": [{"item_id": "b", "type": "view", "weight": 0.5}],
        "evidence": [
            {"item_id": "a", "with_item": "b", "pair_baskets": 3, "lift": 2.5, "signal": "co_purchase"}
        ],
    }


def test_leave_one_out_matches_single_encodes(rec: Recommender, online_retail_sample: Dataset) -> None:
    case = next(c for c in online_retail_sample.test if len({i for i in c.prefix if i in rec.vocab}) >= 3)
    history, types = list(case.prefix), list(case.prefix_types)
    target = rec.recommend(history, k=1, types=types)[0][0]
    attribution = rec.attribute([history], [types])
    drops = attribution.drops(rec, 0, [target])[:, 0]
    row = rec.vocab.get(target)
    encoded = rec.encode([history], [types])
    assert attribution.sessions.vectors[0] == pytest.approx(encoded.vectors[0], abs=1e-5)
    full = encoded.scores(rec.item_vectors)[0, row]
    for position, drop in zip(attribution.variants.positions[0], drops, strict=True):
        left_out = rec.encode([without(history, position)], [without(types, position)])
        assert drop == pytest.approx(float(full - left_out.scores(rec.item_vectors)[0, row]), abs=1e-4)


def test_strongest_reason_is_faithful(rec: Recommender, online_retail_sample: Dataset) -> None:
    cases = online_retail_sample.test[:200]
    result = faithfulness(rec, [list(c.prefix) for c in cases], [list(c.prefix_types) for c in cases], seed=0)
    assert result["cases"] >= 20
    assert result["strongest_beats_random"] > 0.6


def test_faithfulness_fails_an_attribution_that_names_the_weakest_event(
    rec: Recommender, online_retail_sample: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check judges by encoding the history without each event, not by the drops the explanation
    read: an attribution that turns its drops around (names the weakest event) must fail it. Judged by
    its own drops, it would still pass: its "strongest" would always beat a random one."""
    cases = online_retail_sample.test[:200]
    histories, types = [list(c.prefix) for c in cases], [list(c.prefix_types) for c in cases]
    honest = faithfulness(rec, histories, types, seed=0)["strongest_beats_random"]
    drops = Attribution.drops
    monkeypatch.setattr(Attribution, "drops", lambda self, *args: -drops(self, *args))
    reversed_ = faithfulness(rec, histories, types, seed=0)["strongest_beats_random"]
    assert reversed_ < 0.3 < honest


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
    attribution = rec.attribute([history, history], [types, types])
    assert attribution.variants.positions[0] == [p for p, i in enumerate(history) if i in rec.vocab]
    assert (
        attribution.variants.rows[0] == attribution.variants.rows[1]
    )  # the second user's inputs are the first's
    drops = attribution.drops(rec, 0, [*targets, "no-such-item"])
    assert not drops[:, -1].any()
    rows = [rec.vocab.get(target) for target in targets]
    full = rec.encode([history], [types]).scores(rec.item_vectors)[0, rows]
    for position, position_drops in zip(attribution.variants.positions[0], drops, strict=True):
        left_out = rec.encode([without(history, position)], [without(types, position)])
        expected = full - left_out.scores(rec.item_vectors)[0, rows]
        assert position_drops[:-1] == pytest.approx(expected, abs=1e-4)
    assert (drops[0] == drops[1]).all()  # the two identical events drop the score alike


def test_drivers_are_the_strongest_positive_events_one_per_item() -> None:
    history = ["a", "b", "a", "c", "d"]
    types = ["view", "view", "add_to_cart", "view", "purchase"]
    positions = [0, 1, 2, 3, 4]
    drops = np.array(
        [  # one column per recommended item
            [0.5, -0.1],
            [0.2, -0.2],
            [0.9, -0.3],
            [0.1, -0.4],
            [-0.3, 0.0],
        ]
    )
    strong, none = drivers_from(history, types, positions, drops)
    assert strong == [Driver("a", "add_to_cart", 0.9), Driver("b", "view", 0.2), Driver("c", "view", 0.1)]
    assert none == []
    assert drivers_from(history, types, [], np.zeros((0, 2))) == [[], []]


def test_drivers_are_computed_once_per_item_and_match_drivers_from(
    rec: Recommender, online_retail_sample: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = next(c for c in online_retail_sample.test if len({i for i in c.prefix if i in rec.vocab}) >= 3)
    history, types = list(case.prefix), list(case.prefix_types)
    items = [item for item, _ in rec.recommend(history, k=6, types=types)]
    attribution = rec.attribute([history], [types])
    expected = drivers_from(
        history, types, attribution.variants.positions[0], attribution.drops(rec, 0, items)
    )
    asked: list[str] = []
    drops = Attribution.drops
    monkeypatch.setattr(
        Attribution, "drops", lambda self, r, row, wanted: asked.extend(wanted) or drops(self, r, row, wanted)
    )
    assert attribution.drivers(rec, 0, items[:4]) == expected[:4]
    assert attribution.drivers(rec, 0, items[2:]) == expected[2:]
    assert asked == items  # the overlap (items 2 and 3) was not computed twice
