"""Dataset adapters: bad input is counted, cleaning is exact, splits are deterministic and leak-free."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from model.data import (
    MAX_PREFIX,
    SAMPLES_DIR,
    TARGETS_PER_INVOICE,
    Case,
    Session,
    default_data_path,
    item_names,
    load_dataset,
    load_events,
    load_online_retail,
    load_retailrocket_sessions,
    read_events,
    read_online_retail,
    view_cases,
)

RETAIL_HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


# --- read_events -----------------------------------------------------------------------------------


def test_csv_bad_rows_are_counted_by_reason(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text(
        "user_id,item_id,type,ts,price,quantity\n"
        "u1,i1,view,2024-01-01T10:00:00Z,1.5,1\n"
        "u1,i2,add_to_cart,1704103300000,,\n"
        "u1,i9,View,1704103300,,\n"
        "u1,,view,2024-01-01T10:00:00Z,1,1\n"
        "u2,i1,click,2024-01-01T10:00:00Z,1,1\n"
        "u2,i1,view,yesterday,1,1\n"
        "u2,i1,view,,1,1\n"
        "u2,i1,view,2024-01-01,abc,1\n"
        "u2,i1,view,2024-01-01,1,0\n"
        "u2,i1,view,2024-01-01,1,1,extra field\n"
        "u2,i1,view\n"
        "u3,007,purchase,2024-01-02 10:00:00+02:00,0,2\n"
    )
    read = read_events(log)
    assert read.bad_rows == Counter(
        {
            "unparseable line": 2,
            "missing item_id": 1,
            "missing ts": 1,
            "unknown type": 2,  # types are exact, as in the stream: "View" is not one
            "bad timestamp": 1,
            "bad price": 1,
        }
    )
    events = read.events
    assert events["item_id"].tolist() == ["i1", "i2", "i1", "007"]  # ids stay strings, leading zeros kept
    assert events["type"].tolist() == ["view", "add_to_cart", "view", "purchase"]
    assert isinstance(events["type"].dtype, pd.CategoricalDtype)
    assert str(events["ts"].dt.tz) == "UTC"
    assert events["ts"].tolist() == [
        pd.Timestamp("2024-01-01 10:00:00", tz="UTC"),
        pd.Timestamp("2024-01-01 10:01:40", tz="UTC"),  # epoch milliseconds
        pd.Timestamp("2024-01-01 00:00:00", tz="UTC"),  # quantity 0 is valid, as in the stream
        pd.Timestamp("2024-01-02 08:00:00", tz="UTC"),  # offset converted
    ]
    assert events["price"].isna().tolist() == [False, True, False, False]


def test_jsonl_gz_bad_rows_are_counted_by_reason(tmp_path: Path) -> None:
    lines = [
        '{"user_id": 1, "item_id": 10, "type": "view", "ts": 1704103200, "session_id": "s1"}',
        '{"user_id": 1, "item_id": 11, "type": "purchase", "ts": "2024-01-01T10:05:00", "quantity": 2}',
        "not json at all",
        "[1, 2]",
        '{"user_id": 1, "item_id": [1], "type": "view", "ts": 1}',
        '{"user_id": 2, "type": "view", "ts": 1}',
        "",
        '{"user_id": 2, "item_id": 3, "type": "view", "ts": 1e30}',
        '{"user_id": 2, "item_id": 3, "type": "view", "ts": "2024-13-45"}',
        '{"user_id": 2, "item_id": 3, "type": "purchase", "ts": 5, "quantity": -1}',
        '{"user_id": 2, "item_id": 3, "type": "view", "ts": 5, "price": "free"',
        '{"user_id": 2, "item_id": NaN, "type": "view", "ts": 5}',
    ]
    log = tmp_path / "events.jsonl.gz"
    log.write_bytes(gzip.compress("\n".join(lines).encode()))
    read = read_events(log)
    assert read.bad_rows == Counter(
        {"unparseable line": 5, "missing item_id": 1, "bad timestamp": 2, "bad quantity": 1}
    )
    assert read.events["user_id"].tolist() == ["1", "1"]  # JSON numbers become "1", never "1.0"
    assert read.events["session_id"].tolist()[0] == "s1"
    assert pd.isna(read.events["session_id"].tolist()[1])
    assert "price" not in read.events.columns  # no line gave one


def test_parquet_typed_columns_are_normalised(tmp_path: Path) -> None:
    log = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "user_id": [1, 2, None],
            "item_id": [10, 11, 12],
            "type": ["view", "purchase", "view"],
            "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
            "price": [1.0, -1.0, 2.0],
        }
    ).to_parquet(log)
    read = read_events(log)
    assert read.bad_rows == Counter({"bad price": 1, "missing user_id": 1})
    assert read.events["user_id"].tolist() == ["1"]
    assert read.events["ts"].tolist() == [pd.Timestamp("2024-01-01", tz="UTC")]


def test_unreadable_logs_raise_clear_errors(tmp_path: Path) -> None:
    no_ts = tmp_path / "events.csv"
    no_ts.write_text("user_id,item_id,type\nu1,i1,view\n")
    with pytest.raises(ValueError, match="no column ts"):
        read_events(no_ts)
    with pytest.raises(ValueError, match="unsupported event log format"):
        read_events(tmp_path / "events.xlsx")
    only_bad = tmp_path / "bad.csv"
    only_bad.write_text("user_id,item_id,type,ts\nu1,i1,teleport,2024-01-01\n")
    with pytest.raises(ValueError, match="no valid events"):
        load_events(only_bad)


# --- load_events -----------------------------------------------------------------------------------

SESSION_LOG = """user_id,item_id,type,ts,session_id,price
u1,a,view,2024-01-01T00:00:00Z,s1,1
u1,b,view,2024-01-01T00:01:00Z,s1,2
u1,c,add_to_cart,2024-01-01T00:02:00Z,s1,4
u2,a,view,2024-01-02T00:00:00Z,s2,3
u2,b,view,2024-01-02T00:01:00Z,s2,
u2,c,purchase,2024-01-02T00:02:00Z,s2,
u3,a,view,2024-01-03T00:00:00Z,s3,
u3,b,view,2024-01-03T00:01:00Z,s3,
u3,c,view,2024-01-04T00:01:00Z,s4,
u3,a,view,2024-01-05T00:00:00Z,s5,
u3,b,remove_from_cart,2024-01-05T00:01:00Z,s5,
u3,c,view,2024-01-05T00:02:00Z,s5,
u4,b,view,2024-01-05T00:03:00Z,,
u4,z,view,2024-01-05T00:04:00Z,,
u4,c,view,2024-01-05T00:05:00Z,,
"""


def test_events_split_keeps_sessions_whole_and_time_ordered(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text(SESSION_LOG)
    dataset = load_events(log, test_fraction=0.3, valid_fraction=0.3)
    # 15 events: test starts at event 11 (01-05 00:01), validation at event 7 (01-03 00:00). Session s5
    # starts before the test boundary but ends after it, so all of it is test.
    assert dataset.train == [
        Session(("a", "b", "c"), ("view", "view", "add_to_cart")),
        Session(("a", "b", "c"), ("view", "view", "purchase")),
    ]
    assert dataset.valid == [Case(("a",), ("view",), "b")]  # s3; s4 has a single event
    assert dataset.test == [
        # s5: the removal is context, not a target
        Case(("a", "b"), ("view", "remove_from_cart"), "c"),
        # u4 has no session id, so its history is the sequence; z never occurs in train
        Case(("b", "z"), ("view", "view"), "c"),
    ]
    assert dataset.catalog is not None
    prices = dataset.catalog.set_index("item_id")["price"]
    assert prices.drop("z").to_dict() == {"a": 2.0, "b": 2.0, "c": 4.0}  # medians of the given prices
    assert pd.isna(prices["z"])


def test_user_histories_split_at_the_boundaries(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text(
        "user_id,item_id,type,ts\n"
        + "".join(f"u1,i{day},view,2024-01-{day:02d}\n" for day in range(1, 11))
        + "u2,i1,view,2024-01-01\n"
    )
    dataset = load_events(log, test_fraction=0.2, valid_fraction=0.2)
    # 11 events by time: u2's (01-01) ties with u1's first, the last 2 are test, the 2 before validation.
    assert dataset.train == [
        Session(tuple(f"i{day}" for day in range(1, 7)), ("view",) * 6),
        Session(("i1",), ("view",)),
    ]
    # Targets must be known items, so a history running into new items yields no case at all.
    assert dataset.valid == [] and dataset.test == []


def test_events_prefix_is_capped(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    rows = [f"u1,i{n % 3},view,{1_700_000_000 + n}" for n in range(MAX_PREFIX + 20)]
    log.write_text("user_id,item_id,type,ts\n" + "\n".join(rows) + "\n")
    dataset = load_events(log, test_fraction=0.1, valid_fraction=0.0)
    assert dataset.valid == []
    assert len(dataset.test) == 7
    assert {len(case.prefix) for case in dataset.test} == {MAX_PREFIX}


# --- Online Retail ---------------------------------------------------------------------------------


def retail_csv(path: Path, rows: list[str]) -> Path:
    path.write_text(RETAIL_HEADER + "".join(f"{row}\n" for row in rows))
    return path


def test_online_retail_cleaning(tmp_path: Path) -> None:
    path = retail_csv(
        tmp_path / "retail.csv",
        [
            '536365,85123a ,"WHITE HANGING HEART T-LIGHT HOLDER",6,2010-12-01 08:26:00,2.55,17850.0,UK',
            "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,UK",
            "536365,POST,POSTAGE,1,2010-12-01 08:26:00,18.0,17850.0,UK",
            "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,2010-12-01 08:27:00,2.55,17850.0,UK",
            "C536379,71053,WHITE METAL LANTERN,-1,2010-12-01 09:41:00,3.39,17850.0,UK",
            "536380,22139,RETROSPOT TEA SET,-4,2010-12-01 09:45:00,4.95,,UK",
            "536381,22139,RETROSPOT TEA SET,4,2010-12-01 09:45:00,0.0,12583.0,France",
            "536382,C2,CARRIAGE,1,2010-12-01 09:50:00,50.0,12583.0,France",
            "536383,GIFT_0001_20,Gift Voucher,1,2010-12-01 09:50:00,16.67,12583.0,France",
            "536384,BANK CHARGES,Bank Charges,1,2010-12-01 09:50:00,15.0,12583.0,France",
            "536385,22139,RETROSPOT TEA SET,4,2010-12-01 09:55:00,4.25,,UK",
            "A563185,B,Adjust bad debt,1,2010-12-01 10:00:00,-11062.06,,UK",
        ],
    )
    lines = read_online_retail(path)
    assert lines["invoice"].tolist() == ["536365", "536365", "536385"]
    assert lines["item_id"].tolist() == ["85123A", "71053", "22139"]
    assert lines["customer_id"].fillna("anonymous").tolist() == ["17850", "17850", "anonymous"]
    # The duplicate 85123A line at 08:27 was merged into the invoice, which is dated by its first line.
    assert lines["ts"].tolist() == [pd.Timestamp("2010-12-01 08:26:00")] * 2 + [
        pd.Timestamp("2010-12-01 09:55")
    ]


def test_online_retail_temporal_split_and_cases(tmp_path: Path) -> None:
    # Last invoice on 2011-01-31, so with 1-week periods: test from 01-25, validation from 01-18.
    path = retail_csv(
        tmp_path / "retail.csv",
        [
            "1001,10001,A,1,2011-01-03 10:00:00,1.0,100.0,UK",
            "1001,10002,B,1,2011-01-03 10:00:00,2.0,100.0,UK",
            "1002,10003,C,1,2011-01-04 10:00:00,3.0,,UK",
            "1002,10002,B,1,2011-01-04 10:00:00,4.0,,UK",
            "1003,10003,C,1,2011-01-05 10:00:00,3.0,200.0,UK",
            "1004,10004,D,1,2011-01-18 00:00:00,1.0,100.0,UK",
            "1004,10001,A,1,2011-01-18 00:00:00,1.0,100.0,UK",
            "1004,10003,C,1,2011-01-18 00:00:00,1.0,100.0,UK",
            "1005,10002,B,1,2011-01-20 10:00:00,1.0,300.0,UK",
            "1006,10002,B,1,2011-01-31 09:00:00,1.0,200.0,UK",
            "1006,10001,A,1,2011-01-31 09:00:00,1.0,200.0,UK",
            "1007,10003,C,1,2011-01-31 10:00:00,1.0,100.0,UK",
            "1007,10002,B,1,2011-01-31 10:00:00,1.0,100.0,UK",
        ],
    )
    dataset = load_online_retail(path, test_weeks=1, valid_weeks=1)
    assert dataset.train == [
        Session(("10001", "10002"), ("purchase",) * 2, (None, None)),
        Session(("10003",), ("purchase",), (None,)),
    ]
    assert dataset.baskets == [("10001", "10002"), ("10003", "10002"), ("10003",)]
    assert dataset.basket_customers == ["100", None, "200"]  # 1002 is anonymous
    assert dataset.test_baskets == [("10002", "10001"), ("10003", "10002")]
    # The shipped complement model's baskets: every invoice in time order, validation and test included.
    assert dataset.all_baskets == [
        *dataset.baskets,
        ("10004", "10001", "10003"),
        ("10002",),
        *dataset.test_baskets,
    ]
    assert dataset.all_basket_customers == ["100", None, "200", "100", "300", "200", "100"]
    # 1004 (validation, customer 100): 10004 is unknown to train, 10001 was bought before -> only 10003.
    # 1005: customer 300 has no history, so no case.
    assert dataset.valid == [Case(("10001", "10002"), ("purchase",) * 2, "10003")]
    # 1006 (customer 200, history C): B and A are new. 1007 (customer 100): nothing new.
    assert dataset.test == [
        Case(("10003",), ("purchase",), "10002"),
        Case(("10003",), ("purchase",), "10001"),
    ]
    assert dataset.catalog is not None
    assert dataset.catalog.set_index("item_id")["price"].to_dict() == {
        "10001": 1.0,
        "10002": 1.0,  # median of 2, 4, 1, 1, 1
        "10003": 2.0,
        "10004": 1.0,
    }


def test_online_retail_test_month_is_a_rolling_origin(tmp_path: Path) -> None:
    # The data ends with January 2011 (the test period); validation is the week before it; February's
    # invoice is as if it had not happened yet.
    path = retail_csv(
        tmp_path / "retail.csv",
        [
            "1001,10001,A,1,2010-12-01 10:00:00,1.0,100.0,UK",
            "1001,10002,B,1,2010-12-01 10:00:00,1.0,100.0,UK",
            "1002,10003,C,1,2010-12-02 10:00:00,1.0,200.0,UK",
            "1003,10003,C,1,2010-12-28 10:00:00,1.0,100.0,UK",
            "1004,10001,A,1,2011-01-10 10:00:00,1.0,200.0,UK",
            "1004,10004,D,1,2011-01-10 10:00:00,1.0,200.0,UK",
            "1005,10002,B,1,2011-02-03 10:00:00,1.0,200.0,UK",
            "1005,10005,E,1,2011-02-03 10:00:00,1.0,200.0,UK",
        ],
    )
    held_out = load_online_retail(path, valid_weeks=1, test_month="2011-01")
    assert held_out.train == [
        Session(("10001", "10002"), ("purchase",) * 2, (None, None)),
        Session(("10003",), ("purchase",), (None,)),
    ]
    assert held_out.valid == [Case(("10001", "10002"), ("purchase",) * 2, "10003")]
    # Customer 200 bought C before: A is new and known to train, D is unknown to train, B comes later.
    assert held_out.test == [Case(("10003",), ("purchase",), "10001")]
    assert held_out.test_baskets == [("10001", "10004")]
    assert held_out.all_baskets[-1] == ("10001", "10004")  # nothing after the test month
    assert held_out.catalog is not None and "10005" not in set(held_out.catalog["item_id"])

    full = load_online_retail(path, valid_weeks=0, test_month="2011-01")
    assert full.train[0] == Session(("10001", "10002", "10003"), ("purchase",) * 3, ("10003", "10003", None))
    assert (full.valid, full.test) == ([], held_out.test)


def test_online_retail_lines_know_the_new_products_of_the_next_basket(tmp_path: Path) -> None:
    path = retail_csv(
        tmp_path / "retail.csv",
        [
            "1001,10001,A,1,2011-01-03 10:00:00,1.0,100.0,UK",
            "1001,10002,B,1,2011-01-03 10:00:00,1.0,100.0,UK",
            "1001,10003,C,1,2011-01-03 10:00:00,1.0,100.0,UK",
            "1002,10002,B,1,2011-01-04 10:00:00,1.0,100.0,UK",
            "1002,10004,D,1,2011-01-04 10:00:00,1.0,100.0,UK",
            "1002,10005,E,1,2011-01-04 10:00:00,1.0,100.0,UK",
            "1003,10001,A,1,2011-01-05 10:00:00,1.0,100.0,UK",
            "1003,10006,F,1,2011-01-05 10:00:00,1.0,100.0,UK",
            "1004,10001,A,1,2011-01-31 10:00:00,1.0,200.0,UK",
        ],
    )
    (session,) = load_online_retail(path, test_weeks=1, valid_weeks=1).train
    # 1001's lines take 1002's new products in turn (B is a re-order); 1002's take F (A is a re-order);
    # the last basket has no next one.
    assert session.next_basket == ("10004", "10005", "10004", "10006", "10006", "10006", None, None)


def test_online_retail_sample_split_is_leak_free_and_deterministic() -> None:
    path = SAMPLES_DIR / "online_retail_sample.csv.gz"
    dataset = load_online_retail(path)
    again = load_online_retail(path)
    assert (dataset.train, dataset.valid, dataset.test) == (again.train, again.valid, again.test)
    assert dataset.valid and dataset.test and dataset.baskets and dataset.test_baskets

    lines = read_online_retail(path)
    valid_start = lines["ts"].max().normalize() + pd.Timedelta(days=1) - pd.Timedelta(weeks=8)
    train_lines = lines[(lines["ts"] < valid_start) & lines["customer_id"].notna()]
    assert sum(len(session.items) for session in dataset.train) == len(train_lines)
    assert len(dataset.train) == train_lines["customer_id"].nunique()
    assert sum(len(basket) for basket in dataset.baskets) == (lines["ts"] < valid_start).sum()

    known = {item for session in dataset.train for item in session.items}
    for case in dataset.valid + dataset.test:
        assert case.target in known
        assert case.target not in case.prefix
        assert 1 <= len(case.prefix) <= MAX_PREFIX
    per_prefix = Counter(case.prefix for case in dataset.test)
    assert max(per_prefix.values()) <= TARGETS_PER_INVOICE


# --- RetailRocket ----------------------------------------------------------------------------------


def test_view_cases_match_the_published_shape() -> None:
    assert view_cases(["a", "b", "c", "d"]) == [
        Case(("a", "b", "c"), ("view",) * 3, "d"),
        Case(("a", "b"), ("view",) * 2, "c"),
    ]
    assert view_cases(["a", "b"]) == []


def test_retailrocket_sample_holds_out_the_last_sessions(tmp_path: Path) -> None:
    sample = SAMPLES_DIR / "retailrocket_sample"
    dataset = load_retailrocket_sessions(sample, valid_fraction=0.1)
    with gzip.open(sample / "train_sessions.txt.gz", "rt") as lines:
        sessions = [tuple(line.split()) for line in lines]
    assert [session.items for session in dataset.train] == sessions[:7200]
    assert dataset.valid == [case for items in sessions[7200:] for case in view_cases(items)]
    assert len(dataset.test) == 1500
    assert all(case.prefix_types == ("view",) * len(case.prefix) for case in dataset.test)

    # Plain-text files read the same as gzipped ones.
    for name in ("train_sessions.txt", "test_cases.tsv"):
        with gzip.open(sample / f"{name}.gz", "rb") as source, (tmp_path / name).open("wb") as target:
            shutil.copyfileobj(source, target)
    plain = load_retailrocket_sessions(tmp_path, valid_fraction=0.1)
    assert (plain.train, plain.valid, plain.test) == (dataset.train, dataset.valid, dataset.test)


def test_retailrocket_rejects_malformed_files(tmp_path: Path) -> None:
    (tmp_path / "train_sessions.txt").write_text("1 2 3\n")
    with pytest.raises(FileNotFoundError, match=r"test_cases\.tsv"):
        load_retailrocket_sessions(tmp_path)
    (tmp_path / "test_cases.tsv").write_text("prefix\ttarget\n1 2\t\n")
    with pytest.raises(ValueError, match=r"test_cases\.tsv:2"):
        load_retailrocket_sessions(tmp_path)


# --- Dispatch --------------------------------------------------------------------------------------


def test_default_paths_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BUNDLECAST_DATA_DIR", str(tmp_path))
    assert default_data_path("retailrocket-sessions") == tmp_path / "retailrocket-sessions"
    shutil.copytree(SAMPLES_DIR / "retailrocket_sample", tmp_path / "retailrocket-sessions")
    assert len(load_dataset("retailrocket-sessions").test) == 1500
    with pytest.raises(ValueError, match="no default location"):
        default_data_path("events")


def test_load_dataset_dispatches_events(tmp_path: Path) -> None:
    log = tmp_path / "events.csv"
    log.write_text(SESSION_LOG)
    assert load_dataset("events", log).train == load_events(log).train


def test_item_names_are_title_case_without_a_capital_after_an_apostrophe() -> None:
    catalog = pd.DataFrame(
        {
            "item_id": ["1", "2", "3", "4"],
            "description": ["POPPY'S PLAYHOUSE BEDROOM", " SET OF 6 T-LIGHTS ", "DON'T PANIC", None],
        }
    )
    assert item_names(catalog) == {
        "1": "Poppy's Playhouse Bedroom",
        "2": "Set Of 6 T-Lights",
        "3": "Don't Panic",
    }
