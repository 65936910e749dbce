"""Event logs, dataset adapters and deterministic splits.

Everything downstream (the attention model, the baselines, the evaluation harness, the stream)
speaks the small types defined here, so the datasets differ only in their adapters.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import IO

import pandas as pd
from tqdm import tqdm

EVENT_TYPES: tuple[str, ...] = ("view", "add_to_cart", "remove_from_cart", "purchase")

# Bundled, attributed subsets of the real data for the demo and the tests (see samples/README.md).
SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"


@dataclass(frozen=True)
class Session:
    """One user's events in time order: item ids (strings) and their event types."""

    items: tuple[str, ...]
    types: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    """A next-item prediction case: the events so far and the item that came next."""

    prefix: tuple[str, ...]
    prefix_types: tuple[str, ...]
    target: str


@dataclass
class Dataset:
    """A split dataset. `train` never contains the sessions that `valid` and `test` cases come from."""

    name: str
    train: list[Session]
    valid: list[Case]
    test: list[Case]
    catalog: pd.DataFrame | None = None  # columns: item_id, description, price
    baskets: list[tuple[str, ...]] = field(default_factory=list)  # training-period baskets, if known
    test_baskets: list[tuple[str, ...]] = field(default_factory=list)  # test-period baskets, if known


def views(items: Sequence[str]) -> Session:
    """A session of plain views, the shape of the RetailRocket data."""
    return Session(tuple(items), ("view",) * len(items))


# --- RetailRocket (SR-GNN preprocessing) -----------------------------------------------------------

# The published test cases start at prefixes of two clicks (a session a b c yields only a b -> c),
# so validation cases are cut the same way to keep validation and test comparable.
RETAILROCKET_MIN_PREFIX = 2


def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _find_file(directory: Path, name: str) -> Path:
    """`name` or its gzipped twin, so the loaders read the full data and the bundled samples alike."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {name} nor {name}.gz in {directory}")


def view_cases(items: Sequence[str], min_prefix: int = RETAILROCKET_MIN_PREFIX) -> list[Case]:
    """Every prefix of a view session (longest first, as in the published test file) -> the next item."""
    ends = range(len(items) - 1, min_prefix - 1, -1)
    return [Case(tuple(items[:end]), ("view",) * end, items[end]) for end in ends]


def load_retailrocket_sessions(directory: Path, valid_fraction: float = 0.1, seed: int = 0) -> Dataset:
    """RetailRocket view sessions with the published test cases.

    `test` is every published case, in file order. Validation is carved from the training sessions:
    the file is roughly chronological, so the last `valid_fraction` of its sessions are held out
    (mimicking the test protocol, which takes the latest sessions) and cut into prefix cases like the
    test cases; `train` is the rest. The split is deterministic; `seed` is accepted for interface
    symmetry with other loaders but a chronological hold-out needs no randomness.
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    with _open_text(_find_file(directory, "train_sessions.txt")) as lines:
        sessions = [tuple(line.split()) for line in lines if line.strip()]
    n_train = len(sessions) - round(len(sessions) * valid_fraction)
    valid = [case for items in sessions[n_train:] for case in view_cases(items)]
    return Dataset(
        name="retailrocket-sessions",
        train=[views(items) for items in sessions[:n_train]],
        valid=valid,
        test=_read_view_cases(_find_file(directory, "test_cases.tsv")),
    )


def _read_view_cases(path: Path) -> list[Case]:
    with _open_text(path) as lines:
        header = next(lines, "").rstrip("\n").split("\t")
        if header != ["prefix", "target"]:
            raise ValueError(f"{path}: expected header 'prefix<TAB>target', got {header}")
        cases = []
        for line_number, line in enumerate(lines, start=2):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 2 or not fields[0].split() or not fields[1].strip():
                raise ValueError(f"{path}:{line_number}: expected a non-empty prefix and a target")
            prefix = tuple(fields[0].split())
            cases.append(Case(prefix, ("view",) * len(prefix), fields[1].strip()))
    return cases


# --- UCI Online Retail ---------------------------------------------------------------------------

# Stock codes that carry a digit but are not products. Codes without any digit (POST, DOT, D, M, S,
# B, PADS, CRUK, AMAZONFEE, BANK CHARGES, ...) are fees, postage and adjustments, and gift vouchers
# (GIFT_0001_10 ...) are money, so those two families are detected by shape instead of listed.
NON_PRODUCT_CODES: frozenset[str] = frozenset({"C2"})  # carriage
MAX_PREFIX = 50  # evaluation prefixes keep the latest events; longer histories add little and cost time
TARGETS_PER_INVOICE = 10  # bounds the cases that one wholesale order (median 15 items) contributes

_RETAIL_COLUMNS = {
    "InvoiceNo": "str",
    "StockCode": "str",
    "Description": "str",
    "Quantity": "float64",
    "InvoiceDate": "str",
    "UnitPrice": "float64",
    "CustomerID": "str",
    "Country": "str",
}


def is_product_code(codes: pd.Series) -> pd.Series:
    """True for normalised stock codes of real products (see NON_PRODUCT_CODES for what is not)."""
    return codes.str.contains(r"\d") & ~codes.str.startswith("GIFT_") & ~codes.isin(NON_PRODUCT_CODES)


def read_online_retail(path: Path) -> pd.DataFrame:
    """Purchased product lines of the UCI Online Retail export, cleaned and in purchase order.

    Cancellations (invoice C...), returns (quantity <= 0), zero or negative prices and non-product
    codes are dropped; a product bought twice on one invoice keeps its first line. Columns:
    invoice, item_id (stock code trimmed and upper-cased), description, price, customer_id
    ("17850.0" -> "17850", NA for anonymous baskets), ts.
    """
    raw = pd.read_csv(path, dtype=_RETAIL_COLUMNS, usecols=list(_RETAIL_COLUMNS))
    lines = pd.DataFrame(
        {
            "invoice": raw["InvoiceNo"].str.strip(),
            "item_id": raw["StockCode"].str.strip().str.upper(),
            "description": raw["Description"].str.strip(),
            "quantity": raw["Quantity"],
            "price": raw["UnitPrice"],
            "customer_id": raw["CustomerID"].str.strip().str.replace(r"\.0*$", "", regex=True),
            "ts": pd.to_datetime(raw["InvoiceDate"], format="%Y-%m-%d %H:%M:%S"),
        }
    )
    kept = lines[
        ~lines["invoice"].str.startswith("C")
        & (lines["quantity"] > 0)
        & (lines["price"] > 0)
        & is_product_code(lines["item_id"])
    ]
    # A few invoices straddle a minute; dating each by its first line keeps its lines together.
    kept = kept.assign(
        customer_id=kept["customer_id"].replace("", pd.NA),
        ts=kept.groupby("invoice")["ts"].transform("min"),
    )
    # A stable sort keeps file (line) order inside an invoice and breaks timestamp ties by invoice.
    kept = kept.sort_values(["ts", "invoice"], kind="stable")
    kept = kept.drop_duplicates(["invoice", "item_id"])
    return kept.drop(columns="quantity").reset_index(drop=True)


def _catalog(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per item: its most frequent description (ties: alphabetical) and median unit price."""
    descriptions = (
        lines.groupby(["item_id", "description"])
        .size()
        .rename("n")
        .reset_index()
        .sort_values(["item_id", "n", "description"], ascending=[True, False, True])
        .drop_duplicates("item_id")
        .set_index("item_id")["description"]
    )
    prices = lines.groupby("item_id", sort=True)["price"].median()
    return pd.DataFrame({"description": descriptions.reindex(prices.index), "price": prices}).reset_index()


def _runs(keys: pd.Series, items: pd.Series) -> list[tuple[str, ...]]:
    """Items grouped by runs of equal consecutive keys (plain lists: arrow-backed iteration is slow)."""
    pairs = zip(keys.tolist(), items.tolist(), strict=True)
    return [tuple(item for _, item in run) for _, run in groupby(pairs, key=itemgetter(0))]


def _baskets(lines: pd.DataFrame) -> list[tuple[str, ...]]:
    """Distinct items of each invoice, invoices in time order (lines are sorted and de-duplicated)."""
    return _runs(lines["invoice"], lines["item_id"])


def load_online_retail(path: Path, test_weeks: int = 4, valid_weeks: int = 4) -> Dataset:
    """UCI Online Retail as customer purchase sequences with a temporal split.

    Periods: the last `test_weeks` weeks (counted back from midnight after the last invoice) are
    test, the `valid_weeks` before are validation, everything earlier is training. `train` holds one
    session per customer with their training-period purchases in order (invoice time, then line
    order); `baskets` are the training-period invoices (anonymous ones too), `test_baskets` the
    test-period ones, each as distinct items.

    Cases, per customer invoice in a period whose customer has bought before: the prefix is that
    customer's purchases before the invoice (any period, last MAX_PREFIX kept), and each target is an
    item of the invoice the customer has never bought before and that occurs in `train` (so it can be
    ranked), in line order, at most TARGETS_PER_INVOICE per invoice. Re-orders are left out: they are
    a different, easier task than discovering the next product.
    """
    lines = read_online_retail(path)
    end = lines["ts"].max().normalize() + pd.Timedelta(days=1)
    test_start = end - pd.Timedelta(weeks=test_weeks)
    valid_start = test_start - pd.Timedelta(weeks=valid_weeks)
    train_lines = lines[lines["ts"] < valid_start]
    customers = lines[lines["customer_id"].notna()]
    by_customer = train_lines.dropna(subset=["customer_id"]).sort_values("customer_id", kind="stable")
    train = [
        Session(items, ("purchase",) * len(items))
        for items in _runs(by_customer["customer_id"], by_customer["item_id"])
    ]
    known = {item for session in train for item in session.items}
    valid, test = _purchase_cases(customers, known, bounds=(valid_start, test_start, end))
    return Dataset(
        name="online-retail",
        train=train,
        valid=valid,
        test=test,
        catalog=_catalog(lines),
        baskets=_baskets(train_lines),
        test_baskets=_baskets(lines[lines["ts"] >= test_start]),
    )


def _purchase_cases(
    customers: pd.DataFrame, known: set[str], bounds: Sequence[pd.Timestamp]
) -> list[list[Case]]:
    """Novel-item cases per customer invoice (see load_online_retail), one list per period
    [bounds[i], bounds[i + 1])."""
    ordered = customers.sort_values(["customer_id", "ts", "invoice"], kind="stable")
    # -1 marks lines outside every period: they only feed the history.
    period_of = pd.cut(ordered["ts"], bins=list(bounds), right=False, labels=False).fillna(-1).astype(int)
    columns = (ordered["customer_id"], ordered["invoice"], ordered["item_id"], period_of)
    rows = zip(*(column.tolist() for column in columns), strict=True)
    cases: list[list[Case]] = [[] for _ in bounds[1:]]
    progress = tqdm(total=len(ordered), desc="online-retail cases", unit="line", disable=None)
    for _, customer_rows in groupby(rows, key=itemgetter(0)):
        history: list[str] = []
        seen: set[str] = set()
        for _, invoice_rows in groupby(customer_rows, key=itemgetter(1)):
            invoice = list(invoice_rows)
            items = [item for _, _, item, _ in invoice]
            period = invoice[0][3]
            if period >= 0 and history:
                prefix = tuple(history[-MAX_PREFIX:])
                targets = [item for item in items if item not in seen and item in known]
                cases[period].extend(
                    Case(prefix, ("purchase",) * len(prefix), item) for item in targets[:TARGETS_PER_INVOICE]
                )
            history.extend(items)
            seen.update(items)
            progress.update(len(invoice))
    progress.close()
    return cases
