"""Near-duplicates (substitutes) and product kinds, from item ids and catalogue descriptions.

A bundle of "PINK RETROSPOT CAKE CASES" and "RED RETROSPOT CAKE CASES" is one product in two colours: a
substitute, not a complement. Two items are near-duplicates when

- their stock codes share a base (online-retail codes 85123A and 85123B are variants of product 85123), or
- at least half of their content words are shared (Jaccard), content words being what is left once colours,
  sizes, counts and filler words are removed: "RED RETROSPOT CAKE CASES" and "PINK RETROSPOT CAKE CASES" share
  all, "JUMBO BAG RED RETROSPOT" and "JUMBO BAG PINK POLKADOT" half, or
- at least half of their product words are shared, product words being content words without pattern and
  design-range words: "CHILDS BREAKFAST SET SPACEBOY" and "CHILDS BREAKFAST SET DOLLY GIRL" are one product in
  two designs, while two products of one design range ("DOLLY GIRL LUNCH BOX", "DOLLY GIRL CHILDRENS CUP")
  share no product word and stay apart: a range is what a bundle should be made of.

An item's product type (its noun phrase) is the leading or trailing pair of content words, whichever the
catalogue uses more often in that position: descriptions put the noun either first ("JUMBO BAG <design>")
or last ("<design> CAKE CASES", "<design> T-LIGHT HOLDER"), and a phrase that many descriptions share in one
position is the product, the rest is the design. Its *kind* is the head noun of the type, singular ("BAG",
"CASE", "HOLDER"), so that a bundle can ask for more than one kind of product.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

COLOURS = frozenset(
    [
        "RED",
        "PINK",
        "BLUE",
        "GREEN",
        "WHITE",
        "BLACK",
        "IVORY",
        "CREAM",
        "SILVER",
        "GOLD",
        "PURPLE",
        "YELLOW",
        "ORANGE",
        "BROWN",
        "GREY",
        "GRAY",
        "NATURAL",
        "PASTEL",
        "LILAC",
        "TURQUOISE",
        "AQUA",
        "CHOCOLATE",
        "COPPER",
        "BRONZE",
        "CLEAR",
        "TEAL",
        "MAUVE",
        "BEIGE",
    ]
)
SIZES = frozenset(["SMALL", "LARGE", "MEDIUM", "MINI", "BIG", "GIANT", "TINY", "XL", "XXL", "S", "M", "L"])
FILLER = frozenset(
    [
        "SET",
        "OF",
        "PACK",
        "THE",
        "AND",
        "WITH",
        "IN",
        "ON",
        "A",
        "AN",
        "FOR",
        "TO",
        "W/",
        "W",
        "DESIGN",
        "ASSORTED",
        "COLOUR",
        "COLOURS",
        "COLOURED",
    ]
)
# Print patterns and design ranges: like colours they name a variant of a product, not the product.
PATTERNS = frozenset(
    [
        "RETROSPOT",
        "POLKADOT",
        "POLKA",
        "DOT",
        "DOTS",
        "SPOT",
        "SPOTS",
        "SPOTTY",
        "STRIPE",
        "STRIPES",
        "STRIPED",
        "STRIPEY",
        "GINGHAM",
        "PAISLEY",
        "FLORAL",
        "TARTAN",
        "CHECK",
        "CHECKED",
        "LEOPARD",
        "ZEBRA",
        "CAMOUFLAGE",
        "SPACEBOY",
        "DOLLY",
        "GIRL",
        "REGENCY",
        "WOODLAND",
        "SKULL",
        "SKULLS",
    ]
)
_TOKEN = re.compile(r"[A-Z0-9][A-Z0-9'/&.-]*")
_COUNT = re.compile(r"^(?:\d+|S/\d+|\d+[A-Z]{0,2})$")  # "12", "S/3", "3PC"
_BASE_CODE = re.compile(r"^(\d{4,})[A-Z]{0,3}$")
MIN_SHARED_CONTENT = 0.5  # Jaccard overlap of content words at which two items are near-duplicates


def description_tokens(description: str) -> list[str]:
    """Upper-case word tokens of a description (the text features of the complement model use these too)."""
    return _TOKEN.findall(str(description).upper())


def content_tokens(description: str) -> list[str]:
    """Tokens that name the product or its design: colours, sizes, counts and filler words removed."""
    return [
        token
        for token in description_tokens(description)
        if token not in COLOURS and token not in SIZES and token not in FILLER and not _COUNT.match(token)
    ]


def base_code(item_id: str) -> str:
    """The product a stock code is a variant of (85123A -> 85123); other codes map to themselves."""
    match = _BASE_CODE.match(item_id.strip().upper())
    return match.group(1) if match else item_id


def _singular(word: str) -> str:
    if word.endswith("IES") and len(word) > 4:
        return word[:-3] + "Y"
    if word.endswith(("SSES", "XES", "CHES", "SHES")):
        return word[:-2]
    if word.endswith("S") and not word.endswith("SS") and len(word) > 3:
        return word[:-1]
    return word


def _mostly_shared(words_a: frozenset[str] | None, words_b: frozenset[str] | None) -> bool:
    if not words_a or not words_b:
        return False
    shared = len(words_a & words_b)
    return shared > 0 and shared >= MIN_SHARED_CONTENT * len(words_a | words_b)


class ProductKinds:
    """Product type, kind and base code of every catalogue item, and the near-duplicate relation over them."""

    def __init__(self, descriptions: dict[str, str]) -> None:
        content = {item: content_tokens(text) for item, text in descriptions.items()}
        self.content: dict[str, frozenset[str]] = {
            item: frozenset(tokens) for item, tokens in content.items()
        }
        self.product_words: dict[str, frozenset[str]] = {
            item: words - PATTERNS for item, words in self.content.items()
        }
        leading = Counter(" ".join(tokens[:2]) for tokens in content.values() if len(tokens) >= 3)
        trailing = Counter(" ".join(tokens[-2:]) for tokens in content.values() if len(tokens) >= 2)
        self.product_types: dict[str, str] = {
            item: self._product_type(tokens, leading, trailing) for item, tokens in content.items()
        }
        self.kinds: dict[str, str] = {
            item: _singular(product_type.split()[-1]) if product_type else ""
            for item, product_type in self.product_types.items()
        }

    @classmethod
    def from_catalog(cls, catalog: pd.DataFrame | None) -> ProductKinds:
        if catalog is None or catalog.empty:
            return cls({})
        descriptions = catalog["description"].fillna("").astype(str)
        return cls(dict(zip(catalog["item_id"].astype(str), descriptions, strict=True)))

    @staticmethod
    def _product_type(tokens: Sequence[str], leading: Counter[str], trailing: Counter[str]) -> str:
        if len(tokens) <= 2:
            return " ".join(tokens)
        head, tail = " ".join(tokens[:2]), " ".join(tokens[-2:])
        if leading[head] > trailing[tail] and leading[head] >= 3:
            return head
        if trailing[tail] >= 2:
            return tail
        return tokens[-1]

    def product_type(self, item_id: str) -> str:
        return self.product_types.get(item_id, "")

    def kind(self, item_id: str) -> str:
        """Coarse product kind (head noun); an item without a description is its own kind."""
        return self.kinds.get(item_id) or item_id

    def are_near_duplicates(self, a: str, b: str) -> bool:
        if a == b or base_code(a) == base_code(b):
            return True
        return _mostly_shared(self.content.get(a), self.content.get(b)) or _mostly_shared(
            self.product_words.get(a), self.product_words.get(b)
        )

    def near_duplicate_pairs(self, items: Sequence[str]) -> list[tuple[str, str]]:
        return [(a, b) for a, b in combinations(items, 2) if self.are_near_duplicates(a, b)]


class NearDuplicateIndex:
    """`ProductKinds` over a fixed list of item ids (a vocabulary), as integer arrays for vectorised checks.

    Bundle assembly tests whole candidate pools against each member; answering "which rows are
    near-duplicates of this item" once per item (then cached) turns those pairwise checks into one `isin`.
    """

    def __init__(self, kinds: ProductKinds, item_ids: Sequence[str]) -> None:
        self.kinds = kinds
        self.item_ids = list(item_ids)
        self._listed = frozenset(self.item_ids)
        kind_names = [kinds.kind(item) for item in self.item_ids]
        self._kind_codes = {name: code for code, name in enumerate(dict.fromkeys(kind_names))}
        self.kind_ids = np.array([self._kind_codes[name] for name in kind_names], dtype=np.int64)
        self._by_base: defaultdict[str, list[int]] = defaultdict(list)
        self._by_word: defaultdict[str, list[int]] = defaultdict(list)
        for row, item in enumerate(self.item_ids):
            self._by_base[base_code(item)].append(row)
            for word in kinds.content.get(item, ()):
                self._by_word[word].append(row)
        self._near: dict[str, np.ndarray] = {}

    def kind_id(self, item_id: str) -> int:
        """Code of an item's kind, as in `kind_ids`; -1 for a kind that no listed item has."""
        return self._kind_codes.get(self.kinds.kind(item_id), -1)

    def near_duplicates(self, item_id: str) -> np.ndarray:
        """Sorted rows of the listed items that are near-duplicates of `item_id` (listed or not).

        Only items sharing a base code or a content word can be near-duplicates, so only those are
        checked; answers for listed items are cached (the list bounds the cache).
        """
        cached = self._near.get(item_id)
        if cached is not None:
            return cached
        found = set(self._by_base.get(base_code(item_id), ()))
        sharing = {row for word in self.kinds.content.get(item_id, ()) for row in self._by_word.get(word, ())}
        found.update(row for row in sharing if self.kinds.are_near_duplicates(item_id, self.item_ids[row]))
        rows = np.array(sorted(found), dtype=np.int64)
        if item_id in self._listed:
            self._near[item_id] = rows
        return rows
