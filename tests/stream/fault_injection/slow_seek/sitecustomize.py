"""Fault injection for the worker end-to-end tests, loaded by Python at start-up when this directory is on
the worker's PYTHONPATH: the worker's first seek to committed input offsets that finds some returns to Faust
only once a partition has been delivered, from its new position, a record past its committed offset (or
after 2 s), and every offset gap Faust registers is appended to the file `$FAULT_GAP_LOG`.

Between aiokafka's seek (in Faust's consumer thread) and Faust's own bookkeeping of it (on the event loop),
the worker goes on delivering the records fetched from the new positions; the injection widens that window.
Kafka, RocksDB and the model stay real.
"""

import asyncio
import os
import sys
from collections.abc import Mapping

if "worker" in sys.argv:
    from faust.transport.consumer import Consumer, ThreadDelegateConsumer
    from faust.types import TP

    seek_to_committed, add_gap = ThreadDelegateConsumer.seek_to_committed, Consumer._add_gap
    slowed: list[bool] = []

    async def slow_seek_to_committed(self: ThreadDelegateConsumer) -> Mapping[TP, int]:
        committed = await seek_to_committed(self)
        seeked = {tp: offset for tp, offset in committed.items() if tp.topic == "clickstream" and offset}
        if seeked and not slowed:
            slowed.append(True)
            before_seek = {tp: self._read_offset[tp] for tp in seeked}  # may be past `committed`: dropped
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2.0
            while loop.time() < deadline:
                read = {tp: self._read_offset[tp] for tp in seeked}
                if any(read[tp] != before_seek[tp] and (read[tp] or 0) > seeked[tp] for tp in seeked):
                    break
                await asyncio.sleep(0)  # checks after every delivered record
        return committed

    async def logged_add_gap(self: Consumer, tp: TP, offset_from: int, offset_to: int) -> None:
        with open(os.environ["FAULT_GAP_LOG"], "a") as gaps:
            gaps.write(f"{tp.topic} {tp.partition} {offset_from}-{offset_to}\n")
        await add_gap(self, tp, offset_from, offset_to)

    ThreadDelegateConsumer.seek_to_committed = slow_seek_to_committed
    Consumer._add_gap = logged_add_gap
