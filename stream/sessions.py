"""Deleting users from the session table where their state is: expiry and erasure.

Faust tombstones a deleted key in the changelog partition of the event being processed or, outside one,
in the partition the producer's partitioner hashes the key to (murmur2). Neither need be the partition
that holds the user's state: that is the partition of the input events that wrote it, which the shop's
producer chose (librdkafka's default partitioner is not murmur2). A tombstone anywhere else leaves the
state in its own changelog partition, and a restore from the changelog brings the user back. So every
delete here looks the key up in each partition this worker holds and tombstones it in that partition.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import faust
import orjson
from faust.types import TP

from stream.state import Stored, UserState

SendToPartitions = Callable[[str, Mapping[int, Sequence[tuple[bytes, bytes | None]]]], Awaitable[None]]


class SessionPartitions:
    """The session table's RocksDB partitions on this worker.

    Faust's RocksDB store has no public per-partition API, so this reads its `_dbs` (partition -> Rdict)
    and `_key_index` (key -> partition cache); faust-streaming is pinned to the version this was tested
    on (pyproject.toml), and `tests/stream/test_worker.py` runs it against the real store.
    """

    def __init__(self, table: faust.Table, send: SendToPartitions) -> None:
        self.table = table
        self.send = send  # `stream.transport.DrainingProducer.send_to_partitions`
        self.tombstones: defaultdict[int, list[tuple[bytes, None]]] = defaultdict(list)

    @property
    def _store(self) -> Any:
        return self.table.data

    def held(self) -> list[int]:
        """The partitions whose state this worker holds and owns now (active, not standby)."""
        topic = self.table.changelog_topic_name
        actives = self.table.app.assignor.assigned_actives()
        return sorted(p for p in list(self._store._dbs) if TP(topic, p) in actives)

    def stored_from(self, partition: int, key: bytes | None) -> Stored | None:
        """A fresh iterator over one partition's (key, JSON state) from `key` on; None once the partition
        is no longer held here."""
        db = self._store._dbs.get(partition)
        if db is None or partition not in self.held():
            return None
        offset_key = self._store.offset_key
        return ((k, v) for k, v in db.items(from_key=key) if k != offset_key)

    def _holding(self, key: bytes) -> Iterator[tuple[int, bytes]]:
        """(partition, stored JSON) of every partition held here that has `key`."""
        for partition in self.held():
            stored = self._store._dbs[partition].get(key)
            if stored is not None:
                yield partition, stored

    def state_of(self, key: bytes) -> UserState | None:
        """The user's state, from whichever partition held here has it (None: no state here)."""
        for _, stored in self._holding(key):
            return UserState.from_json(orjson.loads(stored))
        return None

    def _delete_locally(self, partition: int, key: bytes) -> None:
        self._store._dbs[partition].delete(key)
        self._store._key_index.pop(key, None)

    def expire(self, partition: int, key: bytes) -> None:
        """Delete `key` from one partition locally; its tombstone waits in `tombstones` for
        `send_tombstones`, so that a sweep of many users hands them to Kafka a batch at a time."""
        self._delete_locally(partition, key)
        self.tombstones[partition].append((key, None))

    async def send_tombstones(self) -> None:
        """Hand the waiting tombstones to the Kafka client, one record batch per changelog partition.

        Faust's own path (a buffer entry, a client call and a future per record) cost 100,000 expired users
        seconds of the event loop, which answering waited for. A tombstone lost in a crash is sent again by
        the next sweep, which finds the user still in the changelog's restored state and still idle."""
        waiting, self.tombstones = self.tombstones, defaultdict(list)
        if waiting:
            await self.send(self.table.changelog_topic_name, waiting)

    def erase(self, key: bytes) -> int:
        """Delete `key` from every partition held here that has it, each with a tombstone in that changelog
        partition (Faust's producer: a forget request deletes one user); returns how many had it."""
        holding = [partition for partition, _ in self._holding(key)]
        for partition in holding:
            self._delete_locally(partition, key)
            self.table.send_changelog(partition, key, None, value_serializer="raw")
        return len(holding)
