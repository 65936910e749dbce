"""Fault injection for the worker end-to-end tests, loaded by Python at start-up when this directory is on
the worker's PYTHONPATH: from the worker's first seek to its committed input offsets until the flow resumes,
streams take no events from their buffers, and that seek returns only once 10 input events wait in them
(or after 10 s).

So events are buffered when Faust resumes the flow right after that seek, as happens by chance when a
busy worker restarts under load. Kafka, RocksDB and the model stay real.
"""

import asyncio
import functools
import sys

if "worker" in sys.argv:
    from faust.channels import Channel
    from faust.transport.consumer import Consumer

    consumer_init, resume_flow, next_event = Consumer.__init__, Consumer.resume_flow, Channel.__anext__
    seeked: list[bool] = []
    holding: list[bool] = []  # [True] while streams take nothing from their buffers

    @functools.wraps(consumer_init)
    def init_with_a_late_seek(self: Consumer, *args: object, **kwargs: object) -> None:
        """Wraps the consumer's own (outermost) `perform_seek`, so the hold follows all of it."""
        consumer_init(self, *args, **kwargs)
        perform_seek = self.perform_seek

        async def late_perform_seek() -> None:
            await perform_seek()
            if not seeked:
                seeked.append(True)
                holding.append(True)
                buffers = self.app.flow_control._queues  # the buffers a resume clears
                for _ in range(1000):
                    if sum(buffer.qsize() for buffer in buffers) >= 10:
                        return
                    await asyncio.sleep(0.01)

        self.perform_seek = late_perform_seek

    def releasing_resume_flow(self: Consumer) -> None:
        holding.clear()
        resume_flow(self)

    async def held_next_event(self: Channel) -> object:
        while holding:
            await asyncio.sleep(0.01)
        return await next_event(self)

    Consumer.__init__ = init_with_a_late_seek
    Consumer.resume_flow = releasing_resume_flow
    Channel.__anext__ = held_next_event
