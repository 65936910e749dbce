"""Faust's Kafka transport (aiokafka), adjusted for at-least-once answers at stream rates.

`BundlecastApp` is a Faust app whose input consumer fetches on the app's timing and delivers no record
that a restart's seek would make Faust misread as an offset gap (`InputConsumer`), whose producer sends
answers through librdkafka (`AnswerProducer`, confluent-kafka) and delivers everything queued before
input offsets are committed (`DrainingProducer`), and whose flow control keeps buffered events when flow
resumes without having been suspended (`ResumeOnceFlowControl`). Each adjustment says which Faust or
aiokafka behaviour it replaces and why; `stream.worker` builds the app and its agent on top.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from functools import cached_property
from typing import Any, cast

import confluent_kafka
import faust
from aiokafka import AIOKafkaConsumer
from confluent_kafka import KafkaError
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, Message
from faust.types.tuples import FutureMessage
from mode import Service
from mode.services import WaitArgT, WaitResults
from mode.utils.queues import FlowControlEvent
from mode.utils.times import Seconds

from stream.replay import Record

log = logging.getLogger(__name__)

SETTLE_POLL_S = 0.001  # how often a drain, or a put that a full client queue holds back, polls for reports
STOP_FLUSH_S = 10.0  # how long a stopping worker waits for its last answers to be delivered
ANSWER_CLIENT_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "partitioner": "murmur2_random",  # the Java client's partitioner for keyed records
    "linger.ms": 0,  # a micro-batch's answers are queued at once: waiting for more only delays them
    "queue.buffering.max.kbytes": 64 * 1024,  # ~7,000 answers waiting for delivery before `put` waits
}


class InputConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the input fetch timing taken from the app, and a count of the seeks
    that each fetch predates.

    - Fetch wait: Faust hard-codes 1,500 ms. A fetch sent while the worker is caught up sits at the broker
      for the whole wait on brokers that do not complete it when new data arrives, so events at low rates
      waited up to 1.5 s.
    - Prefetch backoff: fetched records wait in aiokafka until Faust asks for them, from the worker's
      event loop, which is busy while a batch is handled. Meanwhile aiokafka sends that broker no fetch
      for any partition, for up to 100 ms by default, so events arriving then waited for the pause: most
      of the p99 latency when the input rate rises. Shorter pauses cost more, smaller fetches under load.
    - Seeks: see `InputConsumer`. Seeks and fetches both run on this thread's loop, so counting a
      partition's seeks where aiokafka makes them, and noting the counts where a fetch hands its records
      over, tells exactly which handed-over records a later seek made stale.
    """

    seeks: dict[TP, int]  # position resets per partition, counted as aiokafka makes them
    seeks_at_fetch: dict[TP, int]  # `seeks` when the records now being delivered were handed over

    async def on_start(self) -> None:
        self.seeks, self.seeks_at_fetch = {}, {}
        await super().on_start()
        # Both are read by the fetcher aiokafka builds in start(), on every fetch it sends (the first one
        # only once partitions are assigned, later than this).
        app, fetcher = cast(BundlecastApp, self.app), cast(AIOKafkaConsumer, self._consumer)._fetcher
        fetcher._fetch_max_wait_ms = app.fetch_max_wait_ms
        fetcher._prefetch_backoff = app.prefetch_backoff_ms / 1000
        seek_to = fetcher.seek_to  # every seek to an offset (committed or given) ends here

        def counted_seek_to(tp: TP, offset: int) -> None:
            seek_to(tp, offset)
            self.seeks[tp] = self.seeks.get(tp, 0) + 1

        fetcher.seek_to = counted_seek_to

    async def _fetch_records(
        self,
        consumer: AIOKafkaConsumer,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Mapping[TP, list[Any]]:
        records = await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )
        # aiokafka drained the records and returned without yielding to this loop: no seek in between.
        self.seeks_at_fetch = dict(self.seeks)
        return records

    def fetched_before_a_seek(self, tp: TP) -> bool:
        """Whether `tp` was seeked after the records now being delivered were fetched."""
        return self.seeks.get(tp, 0) != self.seeks_at_fetch.get(tp, 0)


async def first_turn_then_race(
    coros: Sequence[WaitArgT], race: Callable[..., Awaitable[WaitResults]]
) -> WaitResults:
    """`race(*coros)` (mode's `wait_first`), unless the first coroutine finishes in its first turn of the
    loop: then it alone has won, as it would have in the race, which would have run it the same way.

    A task and one turn of the loop instead of four tasks, a wait and three cancellations. A coroutine
    still waiting after its turn joins the race as the task it now is.
    """
    first = coros[0] if coros else None
    if not asyncio.iscoroutine(first):
        return await race(*coros)
    task = asyncio.ensure_future(first)
    try:
        await asyncio.sleep(0)  # the task's first step runs in this turn, before this coroutine resumes
    except BaseException:
        task.cancel()
        raise
    if not task.done():
        return await race(task, *coros[1:])
    for other in coros[1:]:
        if asyncio.iscoroutine(other):
            other.close()  # never started: nothing to cancel
    return WaitResults([first], [task.result()], False)


class InputConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, delivering no record that a restart's seek to the committed offsets would make
    Faust misread as an offset gap, and committing what was answered when partitions are revoked.

    Faust reads a jump past a partition's last delivered offset as a gap and counts the gap as processed,
    so a commit can pass records this worker never answered (or has not answered yet). Two races of the
    seek to the committed offsets (`perform_seek`), both seen when a worker restarts, made such jumps:
    - Stale records: a worker recovering its table drops the input records it fetches (its flow is
      suspended), then seeks back; the fetch it is iterating goes on delivering records from before the
      seek. They are skipped: aiokafka fetches them again from the new position.
    - Records delivered during the seek: aiokafka seeks the partitions one at a time, looking each
      committed offset up at the broker, and meanwhile goes on fetching the ones already seeked. Faust
      resets its read offsets only after the last one, behind the records it delivered in between, and the
      next record jumps. So no record is delivered while a seek is in progress.
    Stale records are skipped only on topics whose gaps Faust counts as processed (acks enabled: the input).
    """

    _thread: InputConsumerThread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeks_in_progress = 0  # Faust seeks from its recovery and from `getmany`, which may overlap
        self.not_seeking = asyncio.Event()
        self.not_seeking.set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return InputConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def wait_first(self, *coros: WaitArgT, timeout: Seconds | None = None) -> WaitResults:
        """mode's `wait_first`, giving the first coroutine one turn of the loop before racing it.

        Faust hands every fetched record to the streams as `wait_first(callback(message),
        suspend_flow.wait())`, and mode makes a task of each argument and of the consumer's stopped and
        crashed events, then cancels the three that lose: a tenth of the worker's time under load. The
        callback (decode, put into the stream buffer) waits only when flow is suspended or a buffer is
        full (`first_turn_then_race`). Calls while flow is suspended or the consumer stops get mode's race.
        """
        if timeout is not None or self.should_stop or self.suspend_flow.is_set():
            return await super().wait_first(*coros, timeout=timeout)
        return await first_turn_then_race(coros, super().wait_first)

    async def perform_seek(self) -> None:
        self.seeks_in_progress += 1
        self.not_seeking.clear()
        try:
            await super().perform_seek()
        finally:
            self.seeks_in_progress -= 1
            if not self.seeks_in_progress:
                self.not_seeking.set()

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Commit what this worker answered on `revoked` before Faust forgets it, then hand them over.

        Faust drops a revoked partition's acked offsets first and only then runs the app's revoke
        handler, whose commit so finds nothing answered before the rebalance (faust-streaming #502): the
        partition's next owner answered again every event since the last periodic commit, up to
        `commit_interval_s` of input, or thousands of events where a worker was catching up. The fail-over
        phase of `bench/fault_campaign.py` answered 24-47% of its events twice. Committing flushes the
        answers first, as every commit does (`DrainingProducer.flush`).
        """
        for _ in range(3):  # a periodic commit under way makes `commit` wait for it and commit nothing
            if not any(self._acked.get(tp) for tp in revoked):
                break
            await self.commit(revoked)
        await super().on_partitions_revoked(revoked)

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        acks_enabled_for = self.app.topics.acks_enabled_for
        async for tp, message in super().getmany(timeout):
            if not self.not_seeking.is_set():
                await self.not_seeking.wait()
            if not (self._thread.fetched_before_a_seek(tp) and acks_enabled_for(tp.topic)):
                yield tp, message


async def wait_for_hand_overs(
    service: Service, handed_over: Callable[[], int], target: int, progress: asyncio.Event, left: str
) -> None:
    """Return once `handed_over()` reaches `target`: what a flush before a commit waits for, everything
    put before it. Items are handed over in order, each setting `progress`. Raises if `service` stops or
    crashes first (`left` names what is then still waiting), so that no commit passes it.
    """
    while handed_over() < target:
        progress.clear()
        if await service.wait_for_stopped(progress):
            raise RuntimeError(f"{type(service).__name__} stopped with {target - handed_over()} {left}")


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, with a `flush` that returns only once every message buffered before it
    was called is with the Kafka client.

    Before committing input offsets Faust flushes this buffer, then the Kafka client. Faust's own buffer
    flush gives up as soon as no message has left the buffer for 0.1 s (a slow broker, a busy box) and
    ignores a message the buffer is handing over right then, so the commit could cover events whose
    answers were still buffered: a crash then lost those answers (seen as an unanswered event in the
    recovery test). Changelog records and dead letters are buffered (`send_soon`), so this flush is what
    makes them durable before a commit (answers take `AnswerProducer`). Messages buffered after the flush
    began are not waited for, so a commit under steady load does not wait for a buffer that never empties.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.buffered = 0  # messages put, ever
        self.handed_over = 0  # of those, the ones with the Kafka client (the buffer hands over in order)

    def put(self, fut: FutureMessage) -> None:
        super().put(fut)
        self.buffered += 1

    async def _send_pending(self, fut: FutureMessage) -> None:
        await super()._send_pending(fut)
        self.handed_over += 1

    async def flush(self) -> None:
        # Stopping: Faust's own flush raises if anything is left. Threaded producers (a Faust setting this
        # app leaves off) bypass `_send_pending`, so there is nothing to count.
        if self.state != "running" or (self.app is not None and self.app.conf.producer_threaded):
            await super().flush()
            return
        # `message_sent` is set by the buffer's sender after each message.
        await wait_for_hand_overs(
            self, lambda: self.handed_over, self.buffered, self.message_sent, "messages unsent"
        )


def forget_delivered(batches: set[asyncio.Future[Any]]) -> None:
    """Drop the settled batches from `batches`; raise if one of them was not delivered, so that the
    commit this precedes never passes a record that is lost."""
    settled = {batch for batch in batches if batch.done()}
    batches -= settled
    for batch in settled:
        if batch.cancelled() or batch.exception() is not None:
            raise RuntimeError("a batch of records was not delivered") from (
                None if batch.cancelled() else batch.exception()
            )


class BatchDelivery:
    """What the Kafka client has reported of one micro-batch of answers: librdkafka calls `settle` once per
    record (from `poll` or `flush`), with the error if the record could not be delivered."""

    __slots__ = ("error", "unsettled")

    def __init__(self, records: int) -> None:
        self.unsettled = records
        self.error: KafkaError | None = None

    def settle(self, error: KafkaError | None, _message: object) -> None:
        self.unsettled -= 1
        if error is not None and self.error is None:
            self.error = error


class AnswerProducer(Service):
    """Answers to the output topic through librdkafka (confluent-kafka) instead of aiokafka.

    An answer is ~9 KB and every answered event gets one, so handing answers to Kafka is the worker's
    largest I/O. aiokafka builds record batches and runs its sender in Python on the event loop, which
    also runs the model: 27-28 ms of the loop's time per 1,000 answers. librdkafka batches and sends
    from its own C threads; the loop only copies each record into its queue (6-8 ms per 1,000;
    process CPU 11-12 ms instead of 27-28, BENCHMARKS). Its default partitioner for keyed records
    (`murmur2_random`) is the Java client's, so a user's answers land where they did before.

    `put` queues a micro-batch and returns; `drain`, run before every commit, waits until every record put
    before it is delivered (not for later ones: under load the queue never empties) and raises if one was
    not, so a commit covers delivered answers only; after a failure `put` raises too, which stops the agent
    and with it the worker, to restart from its last commit. A full librdkafka queue holds `put` back.
    """

    def __init__(self, options: Mapping[str, Any], stop_flush_s: float = STOP_FLUSH_S, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.options = ANSWER_CLIENT_DEFAULTS | dict(options)
        self.stop_flush_s = stop_flush_s
        self.client: confluent_kafka.Producer | None = None  # made on start: it starts librdkafka's threads
        self.unsettled: deque[BatchDelivery] = deque()  # in the order put
        self.failure: KafkaError | None = None

    async def on_start(self) -> None:
        self.client = confluent_kafka.Producer(self.options)

    async def put(self, topic: str, records: Sequence[Record]) -> None:
        self._raise_failure()
        if not records:
            return
        client = self._live_client()
        delivery = BatchDelivery(len(records))
        self.unsettled.append(delivery)
        for key, value in records:
            while True:
                try:
                    client.produce(topic, value, key, on_delivery=delivery.settle)
                    break
                except BufferError:  # the client's queue is full: backpressure until deliveries free it
                    await self._settle_some()
        client.poll(0)  # run the delivery reports that have arrived
        self._forget_settled()

    async def drain(self) -> None:
        put_before = list(self.unsettled)
        while any(delivery.unsettled for delivery in put_before):
            await self._settle_some()
        self._forget_settled()
        self._raise_failure()

    async def on_stop(self) -> None:
        if self.client is not None:
            left = await asyncio.to_thread(self.client.flush, self.stop_flush_s)
            if left:
                log.warning("%d answers were still undelivered when the worker stopped", left)
            self.client = None  # its threads end with it, rather than reconnecting to a stopped broker

    def _live_client(self) -> confluent_kafka.Producer:
        if self.client is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self.client

    async def _settle_some(self) -> None:
        self._live_client().poll(0)
        if self.should_stop:
            raise RuntimeError(f"{type(self).__name__} stopped with answers undelivered")
        await asyncio.sleep(SETTLE_POLL_S)

    def _forget_settled(self) -> None:
        while self.unsettled and not self.unsettled[0].unsettled:
            delivery = self.unsettled.popleft()
            if delivery.error is not None and self.failure is None:
                log.error("answers could not be delivered: %s", delivery.error)
                self.failure = delivery.error

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"answers could not be delivered: {self.failure}")


class DrainingProducer(faust_aiokafka.Producer):
    """Faust's producer with the draining buffer, record batches for the state's tombstones, and the
    answers' own librdkafka producer (`answers`), drained before every commit like the rest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app
        self.batches_in_flight: set[asyncio.Future[Any]] = set()
        options = cast(BundlecastApp, self.app).answer_client_options
        self.answers = AnswerProducer(options, loop=self.loop, beacon=self.beacon)

    async def on_start(self) -> None:
        await super().on_start()
        await self.add_runtime_dependency(self.answers)

    async def send_to_partitions(
        self, topic: str, grouped: Mapping[int, Sequence[tuple[bytes, bytes | None]]]
    ) -> None:
        """Queue each partition's records (key, value; None: a tombstone) with the Kafka client as record
        batches, one per partition (more where the producer's batch size is reached): Faust hands messages
        over one at a time (a buffer entry, a client call, a delivery future and sensor callbacks each).
        Returns once they are queued; `flush`, which Faust runs before every commit, waits for their
        delivery and raises if one failed."""
        client = self._ensure_producer()
        for partition, partition_records in grouped.items():
            batch = client.create_batch()
            for key, value in partition_records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                    self.batches_in_flight.add(await client.send_batch(batch, topic, partition=partition))
                    batch = client.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
            self.batches_in_flight.add(await client.send_batch(batch, topic, partition=partition))

    async def flush(self) -> None:
        await self.answers.drain()
        await super().flush()  # the buffer, then the client: every batch queued before is now settled
        forget_delivered(self.batches_in_flight)


class BundlecastTransport(faust_aiokafka.Transport):
    Consumer = InputConsumer
    Producer = DrainingProducer


class ResumeOnceFlowControl(FlowControlEvent):
    """Faust's stream flow control, minus dropping the stream buffers on a resume that ends no suspension.

    Faust clears the buffers of every stream whenever flow resumes. When a worker has restored a table
    from the changelog, its input is already flowing as Faust seeks it to the committed offsets and then
    resumes again: the events buffered at that moment were dropped without being answered, and Faust's
    commit then passed them (it commits past a missing first offset, faust-streaming #606). Seen as an
    unanswered event after a restart under load, and reproduced by the `slow_resume` case of
    `test_a_worker_restoring_its_table_answers_the_events_that_arrive_around_its_seek`. Buffers are still
    cleared on resuming after a suspension: what they hold predates the rebalance, and the seek to the
    committed offsets fetches it again.
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


class BundlecastApp(faust.App):
    """A Faust app whose Kafka consumer fetches input on the app's timing (`InputConsumerThread`), whose
    producer delivers every queued answer and buffered message before input offsets are committed
    (`DrainingProducer`), and whose flow control keeps buffered events when flow resumes without having
    been suspended (`ResumeOnceFlowControl`)."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int,
        prefetch_backoff_ms: float,
        answer_client_options: Mapping[str, Any],
        **options: Any,
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.prefetch_backoff_ms = prefetch_backoff_ms
        self.answer_client_options = answer_client_options
        super().__init__(*args, **options)

    def _new_transport(self) -> faust_aiokafka.Transport:
        return BundlecastTransport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return ResumeOnceFlowControl(loop=self.loop)
