"""The `bundlecast` console script on an install without FAISS (no extra chosen): one line, exit status 1."""

from __future__ import annotations

import subprocess
import sys

# `None` in sys.modules makes `import faiss` raise ModuleNotFoundError, as on an install without the extra.
WITHOUT_FAISS = "import sys; sys.modules['faiss'] = None; sys.argv = ['bundlecast', '--help']; "


def run_entry(prelude: str) -> subprocess.CompletedProcess[str]:
    code = prelude + "from stream.entry import main; main()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_an_install_without_faiss_is_told_which_extra_to_add_in_one_line() -> None:
    result = run_entry(WITHOUT_FAISS)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "bundlecast[cpu]" in result.stderr and "bundlecast[gpu]" in result.stderr


def test_with_faiss_the_entry_runs_the_cli() -> None:
    result = run_entry("import sys; sys.argv = ['bundlecast', '--help']; ")
    assert result.returncode == 0, result.stderr
    assert "Usage: bundlecast" in result.stdout
