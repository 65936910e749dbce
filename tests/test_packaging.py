"""What `pip install` brings: FAISS from exactly one extra, so that a GPU install never holds the CPU build.

faiss-cpu and faiss-gpu both install the `faiss` package; installed together, whichever came last overwrites
the other's files, and removing one breaks the other.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()
FAISS_BUILDS = ("faiss-cpu", "faiss-gpu")


def builds_in(requirements: list[str]) -> list[str]:
    names = [re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower() for requirement in requirements]
    return [name for name in names if name.startswith(FAISS_BUILDS)]


def test_faiss_comes_from_one_extra_at_a_time() -> None:
    extras = PROJECT["optional-dependencies"]
    assert builds_in(PROJECT["dependencies"]) == []  # else every GPU install would hold the CPU build too
    assert builds_in(extras["cpu"]) == ["faiss-cpu"]
    assert builds_in(extras["gpu"]) == ["faiss-gpu"]
    others = [requirement for name in extras if name not in ("cpu", "gpu") for requirement in extras[name]]
    assert builds_in(others) == []  # [gpu,dev] on a GPU machine must not bring the CPU build
    assert not [requirement for requirement in others if requirement.lower().startswith("bundlecast[")]


def test_the_readme_and_ci_install_one_build() -> None:
    commands = [line for line in README.splitlines() if "pip install" in line and "-e" in line]
    commands += [line for line in CI_RUN.splitlines() if "pip install" in line]
    assert commands
    for command in commands:
        extras = re.findall(r"\.\[([a-z,]+)\]", command)
        assert extras and all(len({"cpu", "gpu"} & set(group.split(","))) == 1 for group in extras), command
