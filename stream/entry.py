"""The `bundlecast` console script: an install without FAISS gets one line saying which extra to add."""

from __future__ import annotations

import sys

MISSING_FAISS = (
    "error: FAISS is not installed: pip install 'bundlecast[cpu]', or 'bundlecast[gpu]' on a machine with an "
    "NVIDIA GPU (one of the two: both install the `faiss` package)"
)


def main() -> None:
    """Run the CLI (`stream.cli.main`); every command needs FAISS, which comes from an extra."""
    try:
        from stream.cli import main as cli_main
    except ModuleNotFoundError as error:
        if error.name != "faiss":
            raise
        print(MISSING_FAISS, file=sys.stderr)
        raise SystemExit(1) from None
    cli_main()
