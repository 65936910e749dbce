"""Fault injection for the worker end-to-end tests, loaded by Python at start-up when this directory is on
the worker's PYTHONPATH: answering any batch that holds an event for item `POISON` raises, as a bug would.

Kafka, RocksDB and the model stay real; only this one answer fails.
"""

import sys
from collections.abc import Sequence

if "worker" in sys.argv:
    from model import Recommender
    from stream.answer import Answered
    from stream.pipeline import Admitted, Pipeline

    answer = Pipeline.answer

    def answer_or_fail(
        self: Pipeline, recommender: Recommender, batch: Sequence[Admitted], now: float
    ) -> list[Answered]:
        if any(admitted.event.item_id == "POISON" for admitted in batch):
            raise RuntimeError("injected failure for item POISON")
        return answer(self, recommender, batch, now)

    Pipeline.answer = answer_or_fail
