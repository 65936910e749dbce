"""Offline commands: `bundlecast train` and `bundlecast evaluate`."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Mount the offline commands on the root CLI (kept here so the model room owns its commands)."""
