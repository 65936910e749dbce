"""Near-duplicates and kinds on real Online Retail descriptions (the bundled sample's catalogue)."""

from __future__ import annotations

import pytest

from model.data import Dataset
from model.neardup import NearDuplicateIndex, ProductKinds, base_code, content_tokens


@pytest.fixture(scope="module")
def kinds(online_retail_sample: Dataset) -> ProductKinds:
    return ProductKinds.from_catalog(online_retail_sample.catalog)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("22697", "22699"),  # GREEN / ROSES REGENCY TEACUP AND SAUCER
        ("22697", "22698"),  # GREEN / PINK REGENCY TEACUP AND SAUCER
        ("85099B", "22386"),  # JUMBO BAG RED RETROSPOT / JUMBO BAG PINK POLKADOT
        ("85099B", "85099F"),  # one base code: JUMBO BAG RED RETROSPOT / JUMBO BAG STRAWBERRY
        ("22634", "22635"),  # CHILDS BREAKFAST SET SPACEBOY / CHILDS BREAKFAST SET DOLLY GIRL
        ("22634", "22636"),  # ... SPACEBOY / ... CIRCUS PARADE (a design range not in PATTERNS)
        ("22629", "22630"),  # SPACEBOY LUNCH BOX / DOLLY GIRL LUNCH BOX
    ],
)
def test_variants_are_near_duplicates(kinds: ProductKinds, a: str, b: str) -> None:
    assert kinds.are_near_duplicates(a, b) and kinds.are_near_duplicates(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("22630", "22899"),  # DOLLY GIRL LUNCH BOX / CHILDREN'S APRON DOLLY GIRL: one range, two products
        ("22630", "22635"),  # DOLLY GIRL LUNCH BOX / CHILDS BREAKFAST SET DOLLY GIRL
        ("85099B", "21212"),  # JUMBO BAG RED RETROSPOT / PACK OF 72 RETROSPOT CAKE CASES
        ("22697", "85123A"),  # teacup / WHITE HANGING HEART T-LIGHT HOLDER
    ],
)
def test_complements_are_not_near_duplicates(kinds: ProductKinds, a: str, b: str) -> None:
    assert not kinds.are_near_duplicates(a, b)


def test_kinds_name_the_product(kinds: ProductKinds) -> None:
    assert kinds.kind("85099B") == kinds.kind("20713") == "BAG"  # JUMBO BAG RED RETROSPOT, JUMBO BAG OWLS
    assert kinds.kind("21212") == "CASE"  # PACK OF 72 RETROSPOT CAKE CASES
    assert kinds.kind("85123A") == "HOLDER"
    assert kinds.kind("unknown-item") == "unknown-item"


def test_tokens_and_base_codes() -> None:
    assert content_tokens("PACK OF 72 RED RETROSPOT CAKE CASES") == ["RETROSPOT", "CAKE", "CASES"]
    assert base_code("85123A") == base_code("85123b") == "85123"
    assert base_code("POST") == "POST"
    assert base_code("22423") == "22423"


def test_pairs_listed(kinds: ProductKinds) -> None:
    assert kinds.near_duplicate_pairs(["22697", "85123A", "22698"]) == [("22697", "22698")]


def test_index_matches_the_pairwise_relation(kinds: ProductKinds) -> None:
    listed = [*sorted(kinds.content)[:300], "85123Z", "not-in-catalogue"]
    index = NearDuplicateIndex(kinds, listed)
    for item in [*listed[::7], "85123Q", "unknown-item"]:
        expected = [row for row, other in enumerate(listed) if kinds.are_near_duplicates(item, other)]
        assert index.near_duplicates(item).tolist() == expected
    assert "85123Z" in [
        listed[r] for r in index.near_duplicates("85123A")
    ]  # same base code, not listed twice
    for row, item in enumerate(listed):
        assert index.kind_ids[row] == index.kind_id(item)
        assert (index.kind_ids == index.kind_ids[row]).sum() == sum(
            kinds.kind(o) == kinds.kind(item) for o in listed
        )
    assert index.kind_id("unknown-item") == -1
