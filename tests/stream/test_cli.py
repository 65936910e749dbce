"""Mistakes at the command line end in one line on stderr and exit status 1, never a traceback;
`--debug` shows the traceback. One test per class of mistake, each through the real entry point."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stream.cli import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> str:
    """The error line of `bundlecast ARGV`, which must fail with exactly one."""
    monkeypatch.setattr(sys, "argv", ["bundlecast", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()  # progress lines may come first
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert [line for line in lines if line.startswith("error")] == lines[-1:]
    return lines[-1]


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Debug off, and whatever `--debug` sets in os.environ undone after the test (setenv records the
    variable's absence; delenv on an absent one records nothing, and a later test's workers inherited it)."""
    monkeypatch.setenv("BUNDLECAST_DEBUG", "0")


def test_an_event_log_dataset_without_its_file(capsys, monkeypatch, tmp_path: Path) -> None:
    err = run(["train", "--dataset", "events", "--out", str(tmp_path)], capsys, monkeypatch)
    assert "--data" in err


def test_a_data_file_that_does_not_exist(capsys, monkeypatch, tmp_path: Path) -> None:
    err = run(
        ["train", "--dataset", "events", "--data", "/nope.csv", "--out", str(tmp_path)], capsys, monkeypatch
    )
    assert "/nope.csv" in err


@pytest.mark.parametrize("made", [False, True], ids=["missing", "empty"])
def test_a_model_directory_without_a_model(capsys, monkeypatch, tmp_path: Path, made: bool) -> None:
    model_dir = tmp_path / "models"
    if made:
        model_dir.mkdir()
    err = run(["evaluate", "--dataset", "online-retail", "--model", str(model_dir)], capsys, monkeypatch)
    assert "holds no trained model" in err and "bundlecast train" in err
    monkeypatch.setenv("BUNDLECAST_MODEL_DIR", str(model_dir))
    monkeypatch.setenv("BUNDLECAST_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never reached: the model comes first
    assert "holds no trained model" in run(["worker"], capsys, monkeypatch)


def test_a_setting_of_the_wrong_type(capsys, monkeypatch) -> None:
    monkeypatch.setenv("BUNDLECAST_METRICS_PORT", "abc")
    err = run(["worker"], capsys, monkeypatch)
    assert "BUNDLECAST_METRICS_PORT" in err and "'abc'" in err


@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz", "events.jsonl"])
def test_a_binary_file_as_event_log(capsys, monkeypatch, tmp_path: Path, name: str) -> None:
    data = tmp_path / name
    data.write_bytes(bytes(range(128, 256)) * 8)
    argv = ["train", "--dataset", "events", "--data", str(data), "--out", str(tmp_path / "out")]
    assert "not a UTF-8 text event log" in run(argv, capsys, monkeypatch)


def test_an_event_log_too_small_to_train_on(capsys, monkeypatch, tmp_path: Path) -> None:
    data = tmp_path / "events.csv"
    data.write_text("user_id,item_id,type,ts\nu1,a,view,1300000000\nu1,b,view,1300000010\nu2,a,oops,1\n")
    argv = ["train", "--dataset", "events", "--data", str(data), "--out", str(tmp_path / "out")]
    assert "too few to train on" in run(argv, capsys, monkeypatch)


def test_debug_shows_the_traceback(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        sys, "argv", ["bundlecast", "--debug", "train", "--dataset", "events", "--out", str(tmp_path)]
    )
    with pytest.raises(ValueError, match="--data"):
        main()
