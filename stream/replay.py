"""Replaying a dataset into the input topic at a fixed rate, erasure requests, and reading the output topic.

Used by `bundlecast replay`, `forget`, `tail`, `demo` and `bench`, against any broker.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import orjson
import pandas as pd
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from model.data import read_events, read_online_retail
from stream.config import StreamSettings
from stream.events import FORGET

Record = tuple[bytes, bytes]  # key, value: a Kafka message as the clients here send it


def _is_online_retail(path: Path) -> bool:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        return "InvoiceNo" in handle.readline()


def load_events(path: Path) -> pd.DataFrame:
    """Events in time order: user_id, item_id, type, ts (UTC) and price when known.

    An online-retail export becomes one `purchase` per invoice line (anonymous invoices become one-off
    guest users); any other file is read as a generic event log (CSV, JSONL or Parquet).
    """
    if _is_online_retail(path):
        lines = read_online_retail(path)
        guests = "guest-" + lines["invoice"]
        return pd.DataFrame(
            {
                "user_id": lines["customer_id"].fillna(guests),
                "item_id": lines["item_id"],
                "type": "purchase",
                "ts": lines["ts"],
                "price": lines["price"],
            }
        )
    return read_events(path).events.sort_values("ts", kind="stable").reset_index(drop=True)


def event_records(events: pd.DataFrame, run_id: str | None = None) -> Iterator[Record]:
    """Input messages (key = user_id) for the contract; event ids are unique per replay run."""
    run_id = run_id or secrets.token_hex(4)
    optional = [column for column in ("session_id", "price", "quantity") if column in events.columns]
    for n, row in enumerate(events.itertuples(index=False)):
        body = {
            "event_id": f"{run_id}-{n}",
            "user_id": row.user_id,
            "item_id": row.item_id,
            "type": row.type,
            "ts": row.ts.isoformat(),
        }
        for column in optional:
            value = getattr(row, column)
            if not pd.isna(value):
                body[column] = value.item() if hasattr(value, "item") else value
        yield row.user_id.encode("utf-8"), json.dumps(body).encode("utf-8")


async def produce_at_rate(
    settings: StreamSettings,
    records: Iterator[Record],
    rate: float,
    on_sent: Callable[[Record], None] = lambda record: None,
) -> int:
    """Send records to the input topic at `rate` per second (0: as fast as possible); return the count."""
    producer = AIOKafkaProducer(**settings.aiokafka_options(), linger_ms=1)
    await producer.start()
    sent = 0
    try:
        started = time.monotonic()
        for record in records:
            if rate > 0 and (ahead := started + sent / rate - time.monotonic()) > 0:
                await asyncio.sleep(ahead)
            await producer.send(settings.input_topic, key=record[0], value=record[1])
            on_sent(record)
            sent += 1
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def request_erasure(settings: StreamSettings, user_ids: Sequence[str]) -> int:
    """Send a forget request for each user to every partition of the input topic; return the partitions.

    Every partition, not only the one this client's partitioner picks for the key: a user's state is in
    the partition of the events that wrote it, which the shop's producer chose. A worker that gets the
    request deletes the user from every partition it holds (`stream.sessions`)."""
    producer = AIOKafkaProducer(**settings.aiokafka_options())
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(settings.input_topic))
        run_id = secrets.token_hex(4)
        for n, user_id in enumerate(user_ids):
            body = {"event_id": f"forget-{run_id}-{n}", "user_id": user_id, "type": FORGET}
            for partition in partitions:
                await producer.send(
                    settings.input_topic,
                    key=user_id.encode("utf-8"),
                    value=json.dumps(body).encode("utf-8"),
                    partition=partition,
                )
        await producer.flush()
    finally:
        await producer.stop()
    return len(partitions)


async def read_topic(settings: StreamSettings, topic: str, from_beginning: bool) -> AsyncIterator[dict]:
    """Decoded JSON values of a topic, as they arrive (no consumer group: reading never moves offsets)."""
    consumer = AIOKafkaConsumer(
        topic, **settings.aiokafka_options(), auto_offset_reset="earliest" if from_beginning else "latest"
    )
    await consumer.start()
    try:
        async for message in consumer:
            yield orjson.loads(message.value)
    finally:
        await consumer.stop()
