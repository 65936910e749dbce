import json
from pathlib import Path

from typer.testing import CliRunner

from index.cli import app


def test_bench_runs_every_kind_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = "bench --n-items 2000 --dim 8 --nprobe 4 --ef-search 16 --single-queries 5 --batch-queries 64"
    result = CliRunner().invoke(
        app, [*args.split(), "--recall-queries", "20", "--device", "cpu", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [row["kind"] for row in rows] == ["exact", "ivf", "hnsw"]
    assert rows[0]["recall_at_k"] == 1.0
    assert all(row["device"] == "cpu" and row["qps_batch1"] > 0 for row in rows)
    assert "FAISS inner-product search" in result.output


def test_bench_rejects_unknown_kind() -> None:
    result = CliRunner().invoke(app, ["bench", "--kind", "annoy"])
    assert result.exit_code != 0
    assert "annoy" in result.output
