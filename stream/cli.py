"""The `bundlecast` command line: one entry point that mounts each room's commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from index.cli import app as index_app
from model.cli import register as register_model_commands
from model.complement.cli import app as bundles_app
from stream.config import StreamSettings, settings_options

app = typer.Typer(
    help="Bundlecast: streaming e-commerce recommendations and bundles on Kafka.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
DEBUG_ENV = "BUNDLECAST_DEBUG"


@app.callback()
def root(
    debug: bool = typer.Option(
        False, "--debug", help=f"Show the traceback of an error (also: {DEBUG_ENV}=1).", is_eager=True
    ),
) -> None:
    """Bundlecast: streaming e-commerce recommendations and bundles on Kafka."""
    if debug:
        os.environ[DEBUG_ENV] = "1"


def one_line(error: BaseException) -> str:
    """What went wrong, in one line that says what to do where the error knows it."""
    if isinstance(error, ValidationError):
        fields = "; ".join(
            f"{'BUNDLECAST_' + '_'.join(map(str, e['loc'])).upper() if e['loc'] else 'settings'}: "
            f"{e['msg']} (got {e['input']!r})"
            for e in error.errors()
        )
        return f"{fields}: fix the flag or the environment variable"
    if isinstance(error, FileNotFoundError) and error.filename is not None:
        return f"no such file or directory: {error.filename}"
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({error.reason} at byte {error.start}): is it the file you meant?"
    text = " ".join(str(error).split())
    if isinstance(error, ValueError | OSError | RuntimeError) and text:
        return text
    return f"{type(error).__name__}: {text} ({DEBUG_ENV}=1 or --debug shows the traceback)"


def main() -> None:
    """The `bundlecast` command: a mistake ends in one line on stderr and exit status 1, not a traceback."""
    try:
        app()
    except Exception as error:
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        errors.print(f"[red]error:[/] {escape(one_line(error))}", soft_wrap=True, highlight=False)
        raise SystemExit(1) from None


register_model_commands(app)
app.add_typer(index_app, name="index", help="FAISS index tools (benchmark).")
app.add_typer(bundles_app, name="bundles", help="Complement model and bundle evaluation.")

console = Console()
errors = Console(stderr=True)
ONLINE_RETAIL_SAMPLE = (
    Path(__file__).resolve().parents[1] / "model" / "samples" / "online_retail_sample.csv.gz"
)
DATA_HELP = "Events: an online-retail export (one purchase per line) or an event log (.csv/.jsonl/.parquet)."
LOG_LEVEL = typer.Option("warning", help="Worker log level (debug, info, warning, error).")


@app.command()
@settings_options
def worker(settings: StreamSettings, log_level: str = LOG_LEVEL) -> None:
    """Run a stream worker: clickstream in, recommendations out (creates its topics if missing)."""
    from stream.worker import run_worker

    run_worker(settings, log_level)  # a broker or upstream mismatch ends in main()'s one-line error


@app.command()
@settings_options
def replay(
    settings: StreamSettings,
    data: Path = typer.Option(..., "--data", exists=True, dir_okay=False, help=DATA_HELP),
    rate: float = typer.Option(100.0, min=0, help="Events per second (0: as fast as possible)."),
    limit: int = typer.Option(0, min=0, help="Replay only the first N events (0: all)."),
) -> None:
    """Produce a dataset's events to the input topic at a fixed rate, with a progress bar."""
    from tqdm import tqdm

    from stream.replay import event_records, load_events, produce_at_rate

    events = load_events(data)
    events = events.head(limit) if limit else events
    with tqdm(total=len(events), unit="event", desc=f"-> {settings.input_topic}") as bar:
        sent = asyncio.run(
            produce_at_rate(settings, event_records(events), rate, lambda record: bar.update())
        )
    console.print(f"sent {sent:,} events to {settings.input_topic}")


@app.command()
@settings_options
def forget(
    settings: StreamSettings,
    user_ids: list[str] = typer.Argument(..., help="User ids to erase, as in the events' user_id."),
) -> None:
    """Erase users (GDPR art. 17): their session state and its changelog entries, on every worker.

    Sends a forget request per user to every input partition; the worker holding the user deletes the
    state and tombstones it where it is stored, and the user's next event starts from nothing.
    Recommendations and dead letters already published age out with their topics' retention.
    """
    from stream.replay import request_erasure

    too_long = [user for user in user_ids if not user or len(user) > settings.max_id_chars]
    if too_long:
        console.print(f"[red]error:[/] user ids must have 1 to {settings.max_id_chars} characters")
        raise typer.Exit(2)
    partitions = asyncio.run(request_erasure(settings, user_ids))
    console.print(
        f"forget requested for {len(user_ids):,} users on {partitions} partitions of {settings.input_topic}"
    )


@app.command()
@settings_options
def tail(
    settings: StreamSettings,
    from_beginning: bool = typer.Option(False, help="Start at the oldest message instead of new ones."),
    raw: bool = typer.Option(False, help="Print the JSON messages as they are."),
) -> None:
    """Print the recommendations topic as messages arrive (Ctrl-C to stop)."""
    from stream.display import Catalog, format_answer
    from stream.replay import read_topic

    catalog = Catalog() if raw else Catalog.load(settings.model_dir if settings.model_dir.exists() else None)

    async def follow() -> None:
        async for message in read_topic(settings, settings.output_topic, from_beginning):
            if raw:
                print(json.dumps(message), flush=True)
            else:
                console.print(format_answer(message, catalog))

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow())


@app.command()
@settings_options
def demo(
    settings: StreamSettings,
    data: Path = typer.Option(ONLINE_RETAIL_SAMPLE, "--data", exists=True, dir_okay=False, help=DATA_HELP),
    rate: float = typer.Option(10.0, min=0, help="Events per second to replay."),
    limit: int = typer.Option(500, min=0, help="Events to replay (0: all)."),
) -> None:
    """The main job on embedded defaults: Tansu broker, small model, worker, replay, answers printed live.

    Starts Tansu when no broker is configured and trains a small model on the online-retail sample shipped
    in model/samples when BUNDLECAST_MODEL_DIR holds none. Ctrl-C stops everything cleanly.
    """
    from stream.broker import port_or_free
    from stream.demo import WorkerDied, replay_and_show
    from stream.launch import broker_for, describe_model, ensure_model, worker_process

    ports = {"metrics_port": "metrics", "web_port": "query API"}
    for field, what in ports.items():
        wanted = getattr(settings, field)
        port = port_or_free(wanted)
        if port != wanted:
            console.print(f"[yellow]port {wanted} is taken: the worker's {what} on port {port} instead[/]")
            settings = settings.model_copy(update={field: port})
    handle, log_name = tempfile.mkstemp(prefix="bundlecast-demo-worker-", suffix=".log")
    os.close(handle)
    log = Path(log_name)  # kept when something fails, deleted after a clean run
    with tempfile.TemporaryDirectory(prefix="bundlecast-demo-") as scratch, broker_for(settings) as settings:
        console.print(f"broker [bold]{settings.kafka_bootstrap}[/]")
        ensure_model(settings.model_dir)
        console.print(
            f"{describe_model(settings.model_dir)} (the demo trains a small one when none is there)"
        )
        if "BUNDLECAST_STATE_DIR" not in os.environ:
            settings = settings.model_copy(update={"state_dir": Path(scratch) / "state"})
        with worker_process(settings, log) as process:
            if settings.metrics_port:
                console.print(f"metrics on [bold]http://localhost:{settings.metrics_port}/metrics[/]")
            if settings.web_port:
                console.print(
                    f"query API: [bold]curl http://localhost:{settings.web_port}/recommendations/USER_ID[/] "
                    "(a user id from the answers below)"
                )
            console.print(f"worker log {log}; replaying {data.name} at {rate:g} events/s (Ctrl-C to stop)")
            try:
                shown, sent = asyncio.run(
                    replay_and_show(
                        settings, data, rate, limit, console, worker_alive=lambda: process.poll() is None
                    )
                )
            except KeyboardInterrupt:
                console.print("[yellow]interrupted: stopping the worker and the broker[/]")
                return
            except WorkerDied:
                process.wait()
                tail = log.read_text(errors="replace").splitlines()[-15:]
                errors.print("\n".join(tail), markup=False, highlight=False)
                raise RuntimeError(
                    f"the demo's worker exited with status {process.returncode}; its log is kept at {log}"
                ) from None
    if shown < sent:
        raise RuntimeError(
            f"only {shown:,} of {sent:,} events were answered; the worker's log is kept at {log}"
        )
    console.print(f"[green]{shown:,} recommendations received[/]")
    log.unlink()


@app.command()
@settings_options
def bench(
    settings: StreamSettings,
    data: Path = typer.Option(ONLINE_RETAIL_SAMPLE, "--data", exists=True, dir_okay=False, help=DATA_HELP),
    rate: list[float] = typer.Option(
        [500.0, 1000.0, 2000.0, 3000.0, 0.0], help="Offered events/s (repeat; 0: max)."
    ),
    seconds: float = typer.Option(10.0, min=1, help="Length of each fixed-rate step."),
    burst: int = typer.Option(30_000, min=1, help="Events in the as-fast-as-possible (0) step."),
) -> None:
    """Drive a real worker at fixed rates: sustained events/s, p50/p99 produce-to-answer ms, stage split.

    Measures the model in BUNDLECAST_MODEL_DIR; with none there, it first trains the one `bundlecast train
    --dataset online-retail` ships (not the demo's small model)."""
    from rich.table import Table

    from stream.bench import AnswerClock, run_step, wait_for_metrics
    from stream.broker import free_port, port_or_free
    from stream.launch import broker_for, describe_model, ensure_shipped_model, has_model, worker_process
    from stream.metrics import STAGES
    from stream.replay import load_events

    events = load_events(data)
    table = Table(
        "offered/s",
        "events",
        "answered",
        "sustained/s",
        "p50 ms",
        "p99 ms",
        "worker p99 ms",
        "batch",
        "users",
        *(f"{stage} ms" for stage in STAGES),
        title="bundlecast bench",
    )
    with tempfile.TemporaryDirectory(prefix="bundlecast-bench-") as scratch, broker_for(settings) as settings:
        if not has_model(settings.model_dir):
            console.print(
                f"no model in {settings.model_dir}: training the one `bundlecast train --dataset "
                "online-retail` ships (about 5 minutes on 2 cores; BUNDLECAST_MODEL_DIR reuses a trained one)"
            )
        ensure_shipped_model(settings.model_dir)
        console.print(f"measuring {describe_model(settings.model_dir)}")
        settings = settings.model_copy(
            update={
                "state_dir": Path(scratch) / "state",
                "metrics_port": port_or_free(settings.metrics_port) or free_port(),
                "web_port": port_or_free(settings.web_port),
            }
        )
        metrics_url = f"http://127.0.0.1:{settings.metrics_port}/metrics"

        async def drive() -> None:
            await wait_for_metrics(metrics_url)
            async with AnswerClock(settings) as clock:
                await run_step(settings, clock, events, 50.0, 100, metrics_url, "warmup", timeout_s=180)
                for step, offered in enumerate(rate):
                    count = burst if offered == 0 else int(offered * seconds)
                    result = await run_step(settings, clock, events, offered, count, metrics_url, f"s{step}")
                    table.add_row(
                        "max" if offered == 0 else f"{offered:,.0f}",
                        f"{result.events:,}",
                        f"{result.answered:,}",
                        f"{result.sustained:,.0f}",
                        f"{result.p50_ms:.1f}",
                        f"{result.p99_ms:.1f}",
                        f"{result.worker_p99_ms:.1f}",
                        f"{result.batch_size:.1f}",
                        f"{result.batch_users:.1f}",
                        *(f"{result.stage_ms[stage]:.2f}" for stage in STAGES),
                    )
                    console.print(f"step {'max' if offered == 0 else offered} events/s: done")

        with worker_process(settings, Path(scratch) / "worker.log"):
            asyncio.run(drive())
    console.print(table)


if __name__ == "__main__":
    main()
