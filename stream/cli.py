"""The `bundlecast` command line: one entry point that mounts each room's commands."""

from __future__ import annotations

import typer

from index.cli import app as index_app
from model.cli import register as register_model_commands
from stream.config import StreamSettings, settings_options

app = typer.Typer(
    help="Bundlecast: streaming e-commerce recommendations and bundles on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
register_model_commands(app)
app.add_typer(index_app, name="index", help="FAISS index tools (benchmark).")

LOG_LEVEL = typer.Option("warning", help="Worker log level (debug, info, warning, error).")


@app.command()
@settings_options
def worker(settings: StreamSettings, log_level: str = LOG_LEVEL) -> None:
    """Run a stream worker: clickstream in, recommendations out (creates its topics if missing)."""
    from stream.worker import run_worker

    run_worker(settings, log_level)


if __name__ == "__main__":
    app()
