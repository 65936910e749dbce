"""Event logs, dataset adapters and deterministic splits.

Everything downstream (the attention model, the baselines, the evaluation harness, the stream)
speaks the small types defined here, so the datasets differ only in their adapters.
"""

from __future__ import annotations

import csv
import gzip
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import IO, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from tqdm import tqdm

from model.contract import EVENT_TYPES, NON_NEGATIVE_FIELDS, TS_MAX_S, timestamp_seconds

# Bundled, attributed subsets of the real data for the demo and the tests (see samples/README.md).
SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"


@dataclass(frozen=True)
class Session:
    """One user's events in time order: item ids (strings) and their event types."""

    items: tuple[str, ...]
    types: tuple[str, ...]
    # Purchase histories only: per event, a product the user first bought in their next basket (None: no
    # new product). Training predicts it beside the next event (model.sasrec.train.training_windows).
    next_basket: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class Case:
    """A next-item prediction case: the events so far and the item that came next."""

    prefix: tuple[str, ...]
    prefix_types: tuple[str, ...]
    target: str


@dataclass
class Dataset:
    """A split dataset. `train` never contains an event of the validation or test sessions and periods
    that `valid` and `test` cases are scored on (a case's prefix may reach back into training time)."""

    name: str
    train: list[Session]
    valid: list[Case]
    test: list[Case]
    catalog: pd.DataFrame | None = None  # columns: item_id, description, price
    baskets: list[tuple[str, ...]] = field(default_factory=list)  # training-period baskets, if known
    basket_customers: list[str | None] = field(default_factory=list)  # each basket's buyer (None: anonymous)
    test_baskets: list[tuple[str, ...]] = field(default_factory=list)  # test-period baskets, if known
    # Every basket of the data in time order, the validation and test periods included, and their buyers:
    # what the shipped complement model learns from. Complement recall is only ever scored by models fitted
    # afresh on `baskets` (`bundlecast bundles evaluate`), so the shipped one may learn from the test weeks,
    # the latest and most telling baskets for the weeks it will serve.
    all_baskets: list[tuple[str, ...]] = field(default_factory=list)
    all_basket_customers: list[str | None] = field(default_factory=list)


def views(items: Sequence[str]) -> Session:
    """A session of plain views, the shape of the RetailRocket data."""
    return Session(tuple(items), ("view",) * len(items))


# --- RetailRocket (SR-GNN preprocessing) -----------------------------------------------------------

# The published test cases start at prefixes of two clicks (a session a b c yields only a b -> c),
# so validation cases are cut the same way to keep validation and test comparable.
RETAILROCKET_MIN_PREFIX = 2


def open_text(path: Path) -> IO[str]:
    """A UTF-8 text handle on a plain or gzipped (.gz) file."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def find_data_file(directory: Path, name: str) -> Path:
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
    with open_text(find_data_file(directory, "train_sessions.txt")) as lines:
        sessions = [tuple(line.split()) for line in lines if line.strip()]
    n_train = len(sessions) - round(len(sessions) * valid_fraction)
    valid = [case for items in sessions[n_train:] for case in view_cases(items)]
    return Dataset(
        name="retailrocket-sessions",
        train=[views(items) for items in sessions[:n_train]],
        valid=valid,
        test=_read_view_cases(find_data_file(directory, "test_cases.tsv")),
    )


def _read_view_cases(path: Path) -> list[Case]:
    with open_text(path) as lines:
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


def catalog_of(lines: pd.DataFrame) -> pd.DataFrame:
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


def item_names(catalog: pd.DataFrame) -> dict[str, str]:
    """Display names by item id: catalogue descriptions in title case (items without one are left out).

    `str.title` capitalises after an apostrophe ("Poppy'S"), so a letter ending a word after one is
    lowered again ("Poppy's", "Don't").
    """
    names = (
        catalog["description"]
        .fillna("")
        .astype(str)
        .str.strip()
        .str.title()
        .str.replace(r"'([A-Z])\b", lambda match: "'" + match.group(1).lower(), regex=True)
    )
    return {item: name for item, name in zip(catalog["item_id"].astype(str), names, strict=True) if name}


def _runs(keys: pd.Series, items: pd.Series) -> list[tuple[str, ...]]:
    """Items grouped by runs of equal consecutive keys (plain lists: arrow-backed iteration is slow)."""
    pairs = zip(keys.tolist(), items.tolist(), strict=True)
    return [tuple(item for _, item in run) for _, run in groupby(pairs, key=itemgetter(0))]


def baskets_of(lines: pd.DataFrame) -> list[tuple[str, ...]]:
    """Distinct items of each invoice, invoices in time order (lines are sorted and de-duplicated)."""
    return _runs(lines["invoice"], lines["item_id"])


def basket_customers_of(lines: pd.DataFrame) -> list[str | None]:
    """The customer of each invoice of `baskets_of(lines)`, in the same order (None for anonymous ones)."""
    return [None if pd.isna(run[0]) else run[0] for run in _runs(lines["invoice"], lines["customer_id"])]


def load_online_retail(
    path: Path, test_weeks: int = 4, valid_weeks: int = 4, test_month: str | None = None
) -> Dataset:
    """UCI Online Retail as customer purchase sequences with a temporal split.

    Periods: the last `test_weeks` weeks (counted back from midnight after the last invoice) are
    test, the `valid_weeks` before are validation, everything earlier is training. With `test_month`
    (YYYY-MM) the data ends with that month, which is the test period, as if nothing later had happened:
    one fold of a rolling-origin evaluation (`bench/item_folds.py`). `train` holds one
    session per customer with their training-period purchases in order (invoice time, then line
    order); `baskets` are the training-period invoices (anonymous ones too) with their customers in
    `basket_customers`, `test_baskets` the test-period ones, each as distinct items, and `all_baskets` every
    invoice of the data (what the shipped complement model is fitted on).

    Cases, per customer invoice in a period whose customer has bought before: the prefix is that
    customer's purchases before the invoice (any period, last MAX_PREFIX kept), and each target is an
    item of the invoice the customer has never bought before and that occurs in `train` (so it can be
    ranked), in line order, at most TARGETS_PER_INVOICE per invoice. Re-orders are left out: they are
    a different, easier task than discovering the next product.
    """
    lines = read_online_retail(path)
    if test_month is None:
        end = lines["ts"].max().normalize() + pd.Timedelta(days=1)
        test_start = end - pd.Timedelta(weeks=test_weeks)
    else:
        month = pd.Period(test_month, "M")
        test_start, end = month.start_time, (month + 1).start_time
        lines = lines[lines["ts"] < end]
    valid_start = test_start - pd.Timedelta(weeks=valid_weeks)
    train_lines = lines[lines["ts"] < valid_start]
    customers = lines[lines["customer_id"].notna()]
    by_customer = train_lines.dropna(subset=["customer_id"]).sort_values("customer_id", kind="stable")
    train = [
        Session(items, ("purchase",) * len(items), _next_basket_products(items, invoices))
        for items, invoices in zip(
            _runs(by_customer["customer_id"], by_customer["item_id"]),
            _runs(by_customer["customer_id"], by_customer["invoice"]),
            strict=True,
        )
    ]
    known = {item for session in train for item in session.items}
    valid, test = _purchase_cases(customers, known, bounds=(valid_start, test_start, end))
    return Dataset(
        name="online-retail",
        train=train,
        valid=valid,
        test=test,
        catalog=catalog_of(lines),
        baskets=baskets_of(train_lines),
        basket_customers=basket_customers_of(train_lines),
        test_baskets=baskets_of(lines[lines["ts"] >= test_start]),
        all_baskets=baskets_of(lines),
        all_basket_customers=basket_customers_of(lines),
    )


def _next_basket_products(items: Sequence[str], invoices: Sequence[str]) -> tuple[str | None, ...]:
    """Session.next_basket for one customer's purchase lines: the lines of each invoice take the products
    of the next invoice that the customer had never bought, in turn, so each of them is taught.

    Evaluation asks for exactly those (`_purchase_cases`), while the next line of an invoice is mostly more
    of the same basket; a history's last invoice has no next one (None).
    """
    baskets = [
        [item for _, item in lines] for _, lines in groupby(zip(invoices, items, strict=True), itemgetter(0))
    ]
    bought: set[str] = set()
    products: list[str | None] = []
    for basket, following in zip(baskets, [*baskets[1:], []], strict=True):
        bought.update(basket)
        new = [item for item in following if item not in bought]
        products += [new[line % len(new)] if new else None for line in range(len(basket))]
    return tuple(products)


def _purchase_cases(
    customers: pd.DataFrame, known: set[str], bounds: Sequence[pd.Timestamp]
) -> list[list[Case]]:
    """Novel-item cases per customer invoice (see load_online_retail), one list per period
    [bounds[i], bounds[i + 1])."""
    ordered = customers.sort_values(["customer_id", "ts", "invoice"], kind="stable")
    # -1 marks lines outside every period: they only feed the history.
    period_of = pd.Series(np.searchsorted(np.array(bounds), ordered["ts"].to_numpy(), side="right") - 1)
    period_of[period_of >= len(bounds) - 1] = -1  # an empty period (equal bounds) receives nothing
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


# --- Generic event logs ----------------------------------------------------------------------------

REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "type", "ts")
OPTIONAL_EVENT_COLUMNS: tuple[str, ...] = ("session_id", "price", "quantity")
_EVENT_COLUMNS = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS
_ID_COLUMNS = ("user_id", "item_id", "session_id")

log = logging.getLogger(__name__)


@dataclass
class EventLogRead:
    """The valid events of a log, and the rows that were skipped, counted by reason."""

    # user_id, item_id (str), type (categorical), ts (UTC); session_id, price, quantity when given
    events: pd.DataFrame
    bad_rows: Counter[str]


def read_events(path: Path) -> EventLogRead:
    """Read an event log (.csv[.gz], .jsonl[.gz] or .parquet); malformed rows are counted, never fatal.

    Rows follow the event contract (`model.contract`, the stream's too): user_id, item_id, type (one of
    EVENT_TYPES) and ts (epoch seconds or milliseconds, or ISO-8601, naive meaning UTC); session_id,
    price and quantity (numbers >= 0) are optional. A file that
    lacks a required column altogether is a ValueError: no row of it could be read.
    """
    name = path.name.lower()
    bad_rows: Counter[str] = Counter()
    try:
        if name.endswith((".csv", ".csv.gz")):
            raw = _read_csv_text(path, bad_rows)
        elif name.endswith((".jsonl", ".jsonl.gz")):
            raw = _read_jsonl_text(path, bad_rows)
        elif name.endswith(".parquet"):
            raw = pd.read_parquet(path)
        else:
            raise ValueError(f"{path}: unsupported event log format: use .csv[.gz], .jsonl[.gz] or .parquet")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise ValueError(f"{path} is not a UTF-8 text event log ({error}): is it the right file?") from None
    missing = [column for column in REQUIRED_EVENT_COLUMNS if column not in raw.columns]
    if missing:
        needed = ", ".join(REQUIRED_EVENT_COLUMNS)
        raise ValueError(f"{path}: no column {', '.join(missing)}; an event log needs {needed}")
    return EventLogRead(_valid_events(raw, bad_rows), bad_rows)


def _read_csv_text(path: Path, bad_rows: Counter[str]) -> pd.DataFrame:
    """Every field as text (typing happens in _valid_events); rows with the wrong field count are skipped."""
    with open_text(path) as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise ValueError(f"{path}: empty file, expected a header row")

    def skip(_: pacsv.InvalidRow) -> str:
        bad_rows["unparseable line"] += 1
        return "skip"

    try:
        table = pacsv.read_csv(
            path,
            parse_options=pacsv.ParseOptions(invalid_row_handler=skip),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=True
            ),
        )
    except pa.ArrowInvalid as error:  # e.g. bytes that are not UTF-8: the file, not a row, is broken
        raise ValueError(f"{path}: not a readable CSV file: {error}") from error
    return table.to_pandas()


def _read_jsonl_text(path: Path, bad_rows: Counter[str]) -> pd.DataFrame:
    """One JSON object per line; scalars become text, lines that are not objects of scalars are skipped.

    Columns no line mentions are left out, so a missing required column is reported as such.
    """
    records = []
    with open_text(path) as lines:
        for line in tqdm(lines, desc=f"reading {path.name}", unit="line", disable=None):
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_constant=_reject_constant)
            except ValueError:
                bad_rows["unparseable line"] += 1
                continue
            fields = [record.get(column) for column in _EVENT_COLUMNS] if isinstance(record, dict) else []
            if not fields or any(isinstance(value, bool | list | dict) for value in fields):
                bad_rows["unparseable line"] += 1
                continue
            records.append([None if value is None else str(value) for value in fields])
    frame = pd.DataFrame.from_records(records, columns=list(_EVENT_COLUMNS))
    return frame.dropna(axis="columns", how="all") if records else frame


def _reject_constant(name: str) -> None:
    """NaN and Infinity are not JSON; Python's parser accepts them unless told otherwise."""
    raise ValueError(f"{name} is not valid JSON")


def _as_text(values: pd.Series) -> pd.Series:
    """Trimmed strings, NA for missing or blank; whole numbers print as "123", never "123.0"."""
    if pd.api.types.is_float_dtype(values) and (values.dropna() % 1 == 0).all():
        values = values.astype("Int64")  # a typed column of ids with gaps (Parquet) arrives as floats
    text = values.astype("string").str.strip()
    return text.mask(text == "")


def _parse_ts(values: pd.Series) -> pd.Series:
    """UTC timestamps by the event contract (`model.contract.timestamp_seconds`: epoch seconds or
    milliseconds, ISO-8601) or from typed datetimes; NaT where invalid or outside 1970..2100."""
    if pd.api.types.is_datetime64_any_dtype(values):
        utc = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        latest = pd.Timestamp(TS_MAX_S, unit="s", tz="UTC")
        return utc.where((utc >= pd.Timestamp(0, tz="UTC")) & (utc <= latest)).astype("datetime64[ns, UTC]")
    seconds = _as_text(values).map(timestamp_seconds, na_action="ignore").astype("float64")
    return pd.to_datetime(seconds, unit="s", utc=True).astype("datetime64[ns, UTC]")


def _valid_events(raw: pd.DataFrame, bad_rows: Counter[str]) -> pd.DataFrame:
    """Typed valid rows in file order; each invalid row is counted under the first reason it fails."""
    text = {column: _as_text(raw[column]) for column in (*_ID_COLUMNS, "type") if column in raw.columns}
    event_type = text["type"]
    ts = _parse_ts(raw["ts"])
    checks = [(f"missing {column}", text[column].isna()) for column in ("user_id", "item_id", "type")]
    checks += [
        ("missing ts", _as_text(raw["ts"]).isna()),
        ("unknown type", ~event_type.isin(EVENT_TYPES)),
        ("bad timestamp", ts.isna()),
    ]
    numbers: dict[str, pd.Series] = {}
    for column in NON_NEGATIVE_FIELDS:
        if column in raw.columns:
            given = _as_text(raw[column])
            number = pd.to_numeric(given, errors="coerce").astype("float64")
            in_range = np.isfinite(number) & (number >= 0)
            checks.append((f"bad {column}", given.notna() & ~in_range))
            numbers[column] = number
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    for label, failed in checks:
        reason = reason.mask(reason.isna() & failed.fillna(False).astype(bool), label)
    bad_rows.update(reason.dropna().value_counts().to_dict())
    keep = reason.isna().to_numpy()
    events = pd.DataFrame(
        {
            "user_id": text["user_id"][keep],
            "item_id": text["item_id"][keep],
            "type": pd.Categorical(event_type[keep], categories=EVENT_TYPES),
            "ts": ts[keep],
        }
    )
    if "session_id" in text:
        events["session_id"] = text["session_id"][keep]
    for column, values in numbers.items():
        events[column] = values[keep]
    return events.reset_index(drop=True)


def load_events(path: Path, test_fraction: float = 0.1, valid_fraction: float = 0.1) -> Dataset:
    """An event log (see read_events) as sequences with a temporal split.

    Sequences are sessions (user_id, session_id) where a row has a session id, else the user's whole
    history. Periods cut the timeline at the timestamps that leave the last `test_fraction` of events
    for test and the `valid_fraction` before them for validation. A session belongs entirely to the
    period of its last event, so no validation or test session is split into `train`; a user history
    is split at the period boundaries, earlier events staying in `train`.

    Cases: every validation or test event with earlier events in its sequence (the last MAX_PREFIX
    kept, with their types) predicts its item, unless it is a removal from the cart (not something to
    recommend) or an item absent from `train` (it could not be ranked). Bad rows are logged.
    """
    if not (test_fraction >= 0.0 and valid_fraction >= 0.0 and test_fraction + valid_fraction < 1.0):
        raise ValueError(
            f"fractions must be >= 0 and sum below 1: test {test_fraction}, valid {valid_fraction}"
        )
    read = read_events(path)
    if read.bad_rows:
        log.warning("%s: skipped %d bad rows: %s", path, read.bad_rows.total(), dict(read.bad_rows))
    events = read.events.sort_values("ts", kind="stable").reset_index(drop=True)
    if events.empty:
        raise ValueError(f"{path}: no valid events (bad rows: {dict(read.bad_rows)})")
    ts = events["ts"]
    period = (ts >= _time_after(ts, valid_fraction + test_fraction)).astype(int) + (
        ts >= _time_after(ts, test_fraction)
    ).astype(int)
    keys = ["user_id"]
    if "session_id" in events.columns:
        keys.append("session_id")
        session_last = period.groupby([events["user_id"], events["session_id"]]).transform("max")
        period = session_last.fillna(period).astype(int)
    sequence = events.groupby(keys, dropna=False, sort=True).ngroup()
    events = events.assign(sequence=sequence, period=period).sort_values("sequence", kind="stable")
    train_events = events[events["period"] == 0]
    train = [
        Session(items, types)
        for items, types in zip(
            _runs(train_events["sequence"], train_events["item_id"]),
            _runs(train_events["sequence"], train_events["type"].astype("string")),
            strict=True,
        )
    ]
    known = set(train_events["item_id"].tolist())
    valid, test = _event_cases(events, known)
    prices = events.groupby("item_id")["price"].median() if "price" in events.columns else None
    catalog = pd.DataFrame({"item_id": sorted(set(events["item_id"].tolist()))})
    catalog["description"] = pd.NA
    catalog["price"] = catalog["item_id"].map(prices) if prices is not None else np.nan
    return Dataset(name="events", train=train, valid=valid, test=test, catalog=catalog)


def _time_after(ts: pd.Series, fraction: float) -> pd.Timestamp:
    """Start of the period holding the last `fraction` of the (sorted) events; past the end when 0."""
    first = len(ts) - round(len(ts) * fraction)
    return ts.iat[first] if first < len(ts) else ts.iat[-1] + pd.Timedelta(1, "ns")


def _event_cases(events: pd.DataFrame, known: set[str]) -> tuple[list[Case], list[Case]]:
    """Per-event cases of periods 1 (validation) and 2 (test); `events` sorted by sequence, then time."""
    cases: tuple[list[Case], list[Case]] = ([], [])
    columns = (events["sequence"], events["item_id"], events["type"].astype("string"), events["period"])
    rows = zip(*(column.tolist() for column in columns), strict=True)
    for _, sequence_rows in groupby(rows, key=itemgetter(0)):
        items: list[str] = []
        types: list[str] = []
        for _, item, event_type, period in sequence_rows:
            if period > 0 and items and event_type != "remove_from_cart" and item in known:
                cases[period - 1].append(Case(tuple(items[-MAX_PREFIX:]), tuple(types[-MAX_PREFIX:]), item))
            items.append(item)
            types.append(event_type)
    return cases


# --- Dispatch --------------------------------------------------------------------------------------

DatasetName = Literal["retailrocket-sessions", "online-retail", "events"]
_DEFAULT_FILES: dict[str, str] = {
    "retailrocket-sessions": "retailrocket-sessions",
    "online-retail": "online-retail/online_retail_2010-12_2011-10.csv.gz",
}


def default_data_path(name: DatasetName) -> Path:
    """Where a bundled real dataset lives: under $BUNDLECAST_DATA_DIR, else <repo>/../shared/data."""
    if name not in _DEFAULT_FILES:
        raise ValueError(f"dataset {name!r} has no default location: pass the file with --data PATH")
    repo = Path(__file__).resolve().parents[1]
    data_dir = Path(os.environ.get("BUNDLECAST_DATA_DIR", repo.parent / "shared" / "data"))
    return data_dir / _DEFAULT_FILES[name]


def load_dataset(name: DatasetName, path: Path | None = None, holdout_validation: bool = True) -> Dataset:
    """Load a dataset by name with each loader's default split; `path` defaults to default_data_path.

    `holdout_validation=False` folds the validation sessions or period back into `train` (and leaves
    `valid` empty): that is the data a final model is refit on, and the baselines are fit on, before the
    test cases are scored, so that no method loses the most recent training data to tuning.
    """
    loaders: dict[str, Callable[[Path], Dataset]] = {
        "retailrocket-sessions": lambda p: load_retailrocket_sessions(
            p, valid_fraction=0.1 * holdout_validation
        ),
        "online-retail": lambda p: load_online_retail(p, valid_weeks=4 * holdout_validation),
        "events": lambda p: load_events(p, valid_fraction=0.1 * holdout_validation),
    }
    if name not in loaders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(loaders)}")
    return loaders[name](path if path is not None else default_data_path(name))
