"""Rebuild the bundled data samples from the full datasets: `python -m model.samples.make`.

The samples keep the demo and the tests self-contained (a fresh clone has no ../shared/data) while
staying small enough to commit; the selection is deterministic, so rebuilding gives identical bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import typer

from model.data import SAMPLES_DIR, default_data_path, find_data_file, open_text

MIN_INVOICES = 4  # "frequent" customers: enough history for prefixes in every period
CUSTOMER_STRIDE = 3  # every third frequent customer (by id) keeps the file near 1 MB
ANONYMOUS_STRIDE = 40  # a few baskets without a customer, as in the full data
RETAILROCKET_SESSIONS = 8000  # the latest training sessions, closest in time to the test cases
RETAILROCKET_CASES = 1500

app = typer.Typer(add_completion=False)


def _write_gzip(path: Path, text: str) -> None:
    """gzip with a zero timestamp, so identical content gives identical files."""
    path.write_bytes(gzip.compress(text.encode("utf-8"), mtime=0))


def sample_online_retail(source: Path, target: Path) -> int:
    """All rows (original values, file order) of every CUSTOMER_STRIDE-th frequent customer, plus every
    ANONYMOUS_STRIDE-th invoice without a customer. Returns the number of rows written."""
    raw = pd.read_csv(source, dtype=str, keep_default_na=False)
    with_customer = raw[raw["CustomerID"] != ""]
    invoices = with_customer.groupby("CustomerID")["InvoiceNo"].nunique().sort_index()
    customers = set(invoices[invoices >= MIN_INVOICES].index[::CUSTOMER_STRIDE])
    anonymous_invoices = raw.loc[raw["CustomerID"] == "", "InvoiceNo"].unique()
    anonymous = set(anonymous_invoices[::ANONYMOUS_STRIDE])
    sample = raw[raw["CustomerID"].isin(customers) | raw["InvoiceNo"].isin(anonymous)]
    _write_gzip(target, sample.to_csv(index=False))
    return len(sample)


def sample_retailrocket(source: Path, target: Path) -> tuple[int, int]:
    """The last RETAILROCKET_SESSIONS training sessions and the first RETAILROCKET_CASES test cases
    whose items all occur in them. Returns the numbers of sessions and cases written."""
    with open_text(find_data_file(source, "train_sessions.txt")) as lines:
        sessions = [line for line in lines if line.strip()][-RETAILROCKET_SESSIONS:]
    items = {item for line in sessions for item in line.split()}
    with open_text(find_data_file(source, "test_cases.tsv")) as lines:
        header, *cases = lines
    covered = [case for case in cases if set(case.split()) <= items][:RETAILROCKET_CASES]
    target.mkdir(parents=True, exist_ok=True)
    _write_gzip(target / "train_sessions.txt.gz", "".join(sessions))
    _write_gzip(target / "test_cases.tsv.gz", header + "".join(covered))
    return len(sessions), len(covered)


@app.command()
def main(
    online_retail: Path = typer.Option(default_data_path("online-retail"), help="Full Online Retail CSV."),
    retailrocket: Path = typer.Option(
        default_data_path("retailrocket-sessions"), help="Full RetailRocket sessions directory."
    ),
    out: Path = typer.Option(SAMPLES_DIR, help="Where the samples are written."),
) -> None:
    """Write online_retail_sample.csv.gz and retailrocket_sample/ from the full datasets."""
    rows = sample_online_retail(online_retail, out / "online_retail_sample.csv.gz")
    sessions, cases = sample_retailrocket(retailrocket, out / "retailrocket_sample")
    typer.echo(f"online retail: {rows} rows; retailrocket: {sessions} sessions, {cases} test cases")


if __name__ == "__main__":
    app()
