"""Deletes land where the data is: expiry and erasure on a real broker (Tansu) and real RocksDB."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import murmur2

from stream.broker import EmbeddedBroker
from stream.config import StreamSettings
from stream.topics import ensure_topics
from tests.stream.test_worker import (
    ANSWER_TIMEOUT_S,
    answered,
    consume,
    event,
    known_items,
    produce,
    wait_until_answering,
)
from tests.stream.workers import Worker

CHANGELOG = "bundlecast-sessions-changelog"
PARTITIONS = 2  # tests.stream.test_worker.Worker's


def create_topics(broker: EmbeddedBroker) -> None:
    """The worker's topics with PARTITIONS partitions, before any producer makes Tansu auto-create them."""
    asyncio.run(ensure_topics(StreamSettings(kafka_bootstrap=broker.bootstrap, partitions=PARTITIONS)))


def murmur2_partition(key: bytes) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % PARTITIONS


def users_hashing_to(partition: int, count: int, prefix: str) -> list[str]:
    """User ids whose key a Java or aiokafka producer would send to `partition`."""
    users = (f"{prefix}{n}" for n in range(1000))
    return [user for user in users if murmur2_partition(user.encode()) == partition][:count]


async def changelog_records(broker: EmbeddedBroker, until: set[bytes]) -> list[tuple[bytes, int, bool]]:
    """(key, partition, is_tombstone) of the session changelog, read until every key in `until` has a
    tombstone (or a timeout)."""
    consumer = AIOKafkaConsumer(CHANGELOG, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    records: list[tuple[bytes, int, bool]] = []
    await consumer.start()
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while not until <= {key for key, _, tomb in records if tomb} and time.monotonic() < deadline:
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                records.extend((m.key, tp.partition, m.value is None) for m in messages)
    finally:
        await consumer.stop()
    return records


def reasons(records: dict[str, list[dict]], event_id: str) -> str:
    (answer,) = [r for r in records["recommendations"] if r["event_id"] == event_id]
    return answer["items"][0]["reasons"]["code"]


def test_expiry_tombstones_land_where_the_state_is_and_a_restore_keeps_the_users_deleted(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A librdkafka producer's default partitioner is not murmur2: its users' state sits in partitions
    their key does not hash to. Expiry must tombstone it there, or a restore brings the users back."""
    create_topics(kafka_broker)
    items = known_items(artifact_root, 8)
    users = users_hashing_to(0, 4, "expired")
    log = tmp_path / "worker.log"
    # One record per changelog batch: Tansu's ListOffsets misreports a multi-record batch's end, which
    # ends a restore early (StreamSettings.producer_max_batch_bytes); this test is about where deletes go.
    one = {"producer_max_batch_bytes": "1"}
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "first", log, state_ttl_s="1", **one))
    wait_until_answering(kafka_broker)  # its topics exist, with the worker's partition count
    history = [event(n, user, items[n]) for n, user in enumerate(users)]
    asyncio.run(produce(kafka_broker, history, partition=1))  # where the shop's producer put them
    asyncio.run(consume(kafka_broker, lambda r: answered(r) >= {f"e{n}" for n in range(4)}, settle_s=0))

    keys = {user.encode() for user in users}
    records = asyncio.run(changelog_records(kafka_broker, until=keys))
    workers[-1].stop()
    for key in keys:
        partitions = {(partition, tomb) for k, partition, tomb in records if k == key}
        assert partitions == {(1, False), (1, True)}, (key, partitions)

    # A worker restoring from the changelog (empty state dir, no expiry in sight) knows none of them.
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "restored", log, **one))
    probes = [event(100 + n, user, f"unknown-{n}") for n, user in enumerate(users)]
    asyncio.run(produce(kafka_broker, probes, partition=1))
    expected = {f"e{100 + n}" for n in range(4)}
    answers = asyncio.run(consume(kafka_broker, lambda r: answered(r) >= expected, settle_s=0))
    assert {reasons(answers, f"e{100 + n}") for n in range(4)} == {"popular"}, log.read_text()[-3000:]


def test_forget_erases_a_user_wherever_their_state_is_and_their_next_answer_starts_afresh(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    create_topics(kafka_broker)
    items = known_items(artifact_root, 8)
    (hashed_to_0,) = users_hashing_to(0, 1, "gdpr")
    (other,) = users_hashing_to(0, 1, "kept")
    log = tmp_path / "worker.log"
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", log))
    wait_until_answering(kafka_broker)
    # Held in partition 1, where its key does not hash: as a shop's librdkafka producer may place it.
    asyncio.run(produce(kafka_broker, [event(n, hashed_to_0, items[n]) for n in range(3)], partition=1))
    asyncio.run(produce(kafka_broker, [event(10, other, items[5])]))
    before = asyncio.run(
        consume(kafka_broker, lambda r: answered(r) >= {"e0", "e1", "e2", "e10"}, settle_s=0)
    )
    assert reasons(before, "e2") in ("personalized", "repeat")

    cli = [sys.executable, "-m", "stream.cli", "forget", hashed_to_0]
    env = os.environ | {"BUNDLECAST_KAFKA_BOOTSTRAP": kafka_broker.bootstrap}
    done = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and f"on {PARTITIONS} partitions" in done.stdout, done.stdout + done.stderr

    key = hashed_to_0.encode()
    records = asyncio.run(changelog_records(kafka_broker, until={key}))
    assert {(partition, tomb) for k, partition, tomb in records if k == key} == {(1, False), (1, True)}
    asyncio.run(produce(kafka_broker, [event(20, hashed_to_0, "unknown-item"), event(21, other, "unknown")]))
    after = asyncio.run(consume(kafka_broker, lambda r: answered(r) >= {"e20", "e21"}, settle_s=0))
    assert reasons(after, "e20") == "popular"  # none of the old history is left
    assert reasons(after, "e21") in ("personalized", "repeat")  # other users keep theirs
    assert not [r for r in after["recommendations"] if r["event_id"].startswith("forget-")]
    assert not after["clickstream.dlq"]
