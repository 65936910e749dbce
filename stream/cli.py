"""The `bundlecast` command line: one entry point that mounts each room's commands."""

from __future__ import annotations

import typer

from model.cli import register as register_model_commands

app = typer.Typer(
    help="Bundlecast: streaming e-commerce recommendations and bundles on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
register_model_commands(app)
