"""Fault injection for the worker end-to-end tests, loaded by Python at start-up when this directory is on
the worker's PYTHONPATH: the first hand-over of answers to the Kafka client that carries the answer to
event `handover-fails` raises, as a lost broker connection would. Kafka and RocksDB stay real.
"""

import sys
from collections.abc import Sequence

if "worker" in sys.argv:
    from stream.transport import AnswerProducer

    put = AnswerProducer.put
    failed = False

    async def put_or_fail(self: AnswerProducer, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        global failed
        if not failed and any(b'"event_id":"handover-fails"' in value for _, value in records):
            failed = True
            raise RuntimeError("injected hand-over failure")
        await put(self, topic, records)

    AnswerProducer.put = put_or_fail
