"""Complement scores on a hand-made basket set, persistence and the evaluation baselines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from model.complement.cli import app as bundles_app
from model.complement.evaluate import (
    CoPurchaseCompleter,
    completion_cases,
    evaluate_completion,
    monthly_folds,
)
from model.complement.model import ComplementConfig, ComplementModel
from tests.conftest import ONLINE_RETAIL_SAMPLE

# "tea" goes with "saucer" every time; "bag" is a best seller that lands in every basket.
BASKETS = [
    ("tea", "saucer", "bag"),
    ("tea", "saucer", "bag"),
    ("tea", "saucer"),
    ("tea", "bag"),
    ("pen", "paper", "bag"),
    ("pen", "paper", "bag"),
    ("pen", "bag"),
    ("candle", "bag"),
    ("candle", "bag"),
    ("candle", "bag"),
    ("lamp", "bag"),
]
CATALOG = pd.DataFrame(
    {
        "item_id": ["tea", "saucer", "bag", "pen", "paper", "candle", "lamp", "teapot"],
        "description": [
            "ROSES REGENCY TEACUP",
            "ROSES REGENCY SAUCER",
            "JUMBO BAG RED RETROSPOT",
            "PARTY PENCIL",
            "PARTY WRITING PAPER",
            "HEART CANDLE",
            "STAR LAMP",
            "ROSES REGENCY TEACUP BIG",
        ],
        "price": [2.0, 1.5, 2.1, 0.5, 1.0, 3.0, 9.0, 4.0],
    }
)


# No recency decay and a light text prior, so that the hand-made counts alone decide.
FLAT = ComplementConfig(recency_scale=1e6, prior_strength=1.0)


def pair_score(model: ComplementModel, a: str, b: str) -> float:
    """How well b complements a (0 when b is not among a's kept complements)."""
    ia, ib = model.vocab.get(a), model.vocab.get(b)
    return 0.0 if ia is None or ib is None else float(model.scores[ia, ib])


@pytest.fixture(scope="module")
def fitted() -> ComplementModel:
    return ComplementModel.fit(BASKETS, CATALOG, config=FLAT)


def test_true_complement_outranks_the_best_seller(fitted: ComplementModel) -> None:
    assert fitted.complete(["tea"], k=1)[0][0] == "saucer"
    # both are in 3 of tea's 4 baskets; raw counts let the hub win the tie
    assert CoPurchaseCompleter(BASKETS).complete(["tea"], k=1)[0][0] == "bag"


def test_complete_excludes_inputs_and_is_sorted(fitted: ComplementModel) -> None:
    answer = fitted.complete(["pen", "paper"], k=5)
    items = [item for item, _ in answer]
    assert "pen" not in items and "paper" not in items
    assert [s for _, s in answer] == sorted((s for _, s in answer), reverse=True)


def test_never_bought_item_gets_complements_from_its_description(fitted: ComplementModel) -> None:
    # "teapot" is only in the catalogue; it borrows the rows of "tea" and "saucer", described like it.
    top = {item for item, score in fitted.complete(["teapot"], k=3) if score > 1e-6}
    assert top == {"tea", "saucer", "bag"}


def test_unknown_anchor_falls_back_to_popularity(fitted: ComplementModel) -> None:
    assert fitted.complete(["no-such-item"], k=1)[0][0] == "bag"


def test_coview_signal_pushes_substitutes_down() -> None:
    baskets = [("a", "b"), ("a", "c"), ("a", "b"), ("a", "c")]
    plain = ComplementModel.fit(baskets, config=FLAT)
    with_views = ComplementModel.fit(baskets, views_by_session=[("a", "b")] * 5, config=FLAT)
    assert pair_score(plain, "a", "b") == pytest.approx(pair_score(plain, "a", "c"))
    assert pair_score(with_views, "a", "b") < pair_score(with_views, "a", "c")


def test_items_one_customer_buys_on_different_invoices_become_complements() -> None:
    # lamp and bulb never share an invoice, but the customers who buy one buy the other too.
    baskets = [("lamp", "pen"), ("bulb", "pad"), ("lamp", "ink"), ("bulb", "pad"), ("lamp", "pen")]
    customers = ["shop1", "shop1", "shop2", "shop2", None]
    plain = ComplementModel.fit(baskets, config=FLAT)
    with_customers = ComplementModel.fit(baskets, config=FLAT, customers=customers)
    assert pair_score(plain, "lamp", "bulb") == 0.0
    assert pair_score(with_customers, "lamp", "bulb") > 0.0
    # the basket signal still leads: pen is on two of lamp's invoices
    assert with_customers.complete(["lamp"], k=1)[0][0] == "pen"


def test_evidence_counts_pairs_and_lift(fitted: ComplementModel) -> None:
    together, lift = fitted.evidence("tea", "saucer")
    assert together == 3
    assert lift == pytest.approx(3 * len(BASKETS) / (4 * 3))
    assert fitted.evidence("tea", "nothing") == (0, 0.0)


def test_save_load_round_trip(fitted: ComplementModel, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    loaded = ComplementModel.load(tmp_path)
    assert loaded.complete(["tea", "pen"], k=4) == fitted.complete(["tea", "pen"], k=4)
    assert loaded.evidence("pen", "paper") == fitted.evidence("pen", "paper")
    assert loaded.config == fitted.config


def test_fit_is_deterministic() -> None:
    config = ComplementConfig(neighbours=3)
    first = ComplementModel.fit(BASKETS, CATALOG, config=config).complete(["candle"], k=5)
    assert ComplementModel.fit(BASKETS, CATALOG, config=config).complete(["candle"], k=5) == first


def test_completion_metrics_by_hand() -> None:
    baskets = [("tea", "saucer", "bag"), ("lamp",), ("pen", "x", "y", "z"), ("tea", "saucer", "bag", "pen")]
    cases = completion_cases(baskets)
    assert cases == [("tea", ("saucer", "bag")), ("pen", ("x", "y", "z")), ("tea", ("saucer", "bag", "pen"))]
    result = evaluate_completion(CoPurchaseCompleter(BASKETS), cases, k=2)
    # tea -> {bag, saucer}: both found; pen -> x, y, z are unknown: none found; the last basket's 2 of 3
    # found fill both slots: recall capped at k = 2 is 1
    assert result.recall == pytest.approx(2 / 3) and result.hit == pytest.approx(2 / 3)


def test_rows_and_strength_agree_with_the_id_api(fitted: ComplementModel) -> None:
    items = fitted.vocab.item_ids
    for anchors in (["tea"], ["pen", "paper"], ["teapot", "no-such-item"], []):
        rows, scores = fitted.complete_rows(fitted.vocab.encode(anchors), k=4)
        assert [(items[r], float(s)) for r, s in zip(rows, scores, strict=True)] == fitted.complete(
            anchors, 4
        )
    columns = np.arange(len(items))
    for row, item in enumerate(items):
        expected = [max(pair_score(fitted, item, o), pair_score(fitted, o, item)) for o in items]
        assert fitted.strength(row, columns).tolist() == pytest.approx(expected, abs=0)
    assert fitted.strength(items.index("tea"), columns)[items.index("saucer")] > 0


def test_monthly_folds_fit_only_on_what_came_before_each_month() -> None:
    lines = pd.DataFrame(
        {
            "invoice": ["1", "1", "2", "2", "3", "3", "4"],
            "item_id": ["a", "b", "a", "c", "d", "a", "e"],
            "description": ["A", "B", "A", "C", "D", "A", "E"],
            "price": [1.0] * 7,
            "customer_id": ["x", "x", pd.NA, pd.NA, "y", "y", "x"],
            "ts": pd.to_datetime(
                ["2011-01-05"] * 2 + ["2011-02-03"] * 2 + ["2011-02-20"] * 2 + ["2011-03-01"]
            ),
        }
    )
    folds = monthly_folds(lines, first_month="2011-02")
    assert [fold.month for fold in folds] == ["2011-02", "2011-03"]
    february, march = folds
    assert february.fit_baskets == [("a", "b")] and february.fit_customers == ["x"]
    assert february.test_baskets == [("a", "c"), ("d", "a")]
    assert set(february.catalog["item_id"]) == {"a", "b"}  # d is not described before it is sold
    assert march.fit_baskets == [("a", "b"), ("a", "c"), ("d", "a")] and march.test_baskets == [("e",)]


def test_the_monthly_evaluation_reports_every_fold_the_mean_and_the_worst() -> None:
    arguments = ["evaluate", "--folds", "monthly", "--data", str(ONLINE_RETAIL_SAMPLE), "--json"]
    result = CliRunner().invoke(bundles_app, [*arguments, "--first-month", "2011-10", "--label-windows", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    months = [row["month"] for row in report["folds"]]
    assert months == ["2011-10"]
    ratios = [row["ratio"] for row in report["folds"]]
    assert report["worst_fold"]["ratio"] == min(ratios)
    mean = report["mean_recall"]
    assert report["mean_ratio"] == pytest.approx(mean["complement model"] / mean["co-purchase counts"])
    assert all(
        row["popularity"]["baskets"] == row["co-purchase counts"]["baskets"] > 0 for row in report["folds"]
    )
    # The sample's later folds have baskets enough for the learned ranker: it is what the model column holds.
    assert all(row["complement model"] != row["hand-set complements"] for row in report["folds"])
