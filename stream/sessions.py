"""Deleting users from the session table where their state is: expiry and erasure.

Faust tombstones a deleted key in the changelog partition of the event being processed or, outside one,
in the partition the producer's partitioner hashes the key to (murmur2). Neither need be the partition
that holds the user's state: that is the partition of the input events that wrote it, which the shop's
producer chose (librdkafka's default partitioner is not murmur2). A tombstone anywhere else leaves the
state in its own changelog partition, and a restore from the changelog brings the user back. So every
delete here looks the key up in each partition this worker holds and tombstones it in that partition.
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

from stream.state import Stored


class SessionPartitions:
    """The session table's RocksDB partitions on this worker.

    Faust's RocksDB store has no public per-partition API, so this reads its `_dbs` (partition -> Rdict)
    and `_key_index` (key -> partition cache); faust-streaming is pinned to the version this was tested
    on (pyproject.toml), and `tests/stream/test_worker.py` runs it against the real store.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table

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

    def delete(self, partition: int, key: bytes) -> None:
        """Delete `key` from one partition, locally and with a tombstone in that changelog partition."""
        self._store._dbs[partition].delete(key)
        self._store._key_index.pop(key, None)
        self.table.send_changelog(partition, key, None, value_serializer="raw")

    def erase(self, key: bytes) -> int:
        """Delete `key` from every partition held here that has it; returns how many had it."""
        holding = [p for p in self.held() if self._store._dbs[p].get(key) is not None]
        for partition in holding:
            self.delete(partition, key)
        return len(holding)
