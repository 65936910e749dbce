"""`bundlecast demo`: broker, model, worker and a replay of real events, with answers printed as they come."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from stream.config import StreamSettings
from stream.display import Catalog, format_answer
from stream.replay import event_records, load_events, produce_at_rate, read_topic


class WorkerDied(RuntimeError):
    """The demo's worker process exited while events were still on their way."""


async def replay_and_show(
    settings: StreamSettings,
    data: Path,
    rate: float,
    limit: int,
    console: Console,
    answer_timeout_s: float = 120.0,
    worker_alive: Callable[[], bool] = lambda: True,
) -> tuple[int, int]:
    """Replay `limit` events of `data` at `rate`/s, print each answer; return (answers shown, events sent).

    Raises `WorkerDied` as soon as `worker_alive()` turns false: nothing would answer the rest.
    """
    catalog = Catalog.load(settings.model_dir)
    events = load_events(data)
    events = events.head(limit) if limit else events
    run_id = secrets.token_hex(4)
    shown = 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        sent_bar = progress.add_task("events sent", total=len(events))
        answered_bar = progress.add_task("answered", total=len(events))

        async def show() -> None:
            nonlocal shown
            async for message in read_topic(settings, settings.output_topic, from_beginning=True):
                if message["event_id"].startswith(run_id):
                    shown += 1
                    progress.console.print(format_answer(message, catalog))
                    progress.advance(answered_bar)
                    if shown == len(events):
                        return

        async def watch() -> None:
            while worker_alive():
                await asyncio.sleep(0.2)

        printer, watcher = asyncio.create_task(show()), asyncio.create_task(watch())
        producer = asyncio.create_task(
            produce_at_rate(
                settings,
                event_records(events, run_id),
                rate,
                on_sent=lambda record: progress.advance(sent_bar),
            )
        )
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
            deadline = time.monotonic() + answer_timeout_s
            while not printer.done() and not watcher.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if watcher.done() and not printer.done():
                raise WorkerDied("the worker exited before answering every event")
            await producer
        finally:
            for task in (printer, watcher, producer):
                task.cancel()
            await asyncio.gather(printer, watcher, producer, return_exceptions=True)
    return shown, len(events)
