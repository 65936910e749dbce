"""The Faust worker: clickstream in, micro-batched answers out, per-user state in a RocksDB table.

Delivery is at-least-once: Faust commits an input offset only after the batch holding it was fully
handled (`BatchingStream.take_batches` acks after the loop body) and after flushing the producer (every
queued answer, `AnswerOutbox`, and buffered changelog record, `DrainingProducerBuffer`, delivered), so
every valid event is answered before its offset is committed; a crash in between re-answers it with the
same event_id.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import weakref
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
    Sequence,
)
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from functools import cached_property, partial
from typing import Any, NamedTuple, TypeVar, cast

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP, EventT, Message
from faust.types.tuples import FutureMessage
from mode import Service
from mode.services import WaitArgT, WaitResults
from mode.utils.aiter import aiter
from mode.utils.futures import notify
from mode.utils.queues import FlowControlEvent
from mode.utils.times import Seconds

from stream import metrics
from stream.answer import Answer, recommendation_message
from stream.config import StreamSettings
from stream.events import Rejection, dead_letter
from stream.models import ModelHolder
from stream.pipeline import Admitted, Pipeline
from stream.replay import Record
from stream.state import UserState, sweep_expired
from stream.topics import ensure_topics

log = logging.getLogger(__name__)

SESSIONS_TABLE = "sessions"
LAG_INTERVAL_S = 5.0
ANSWER_BATCHES_WAITING = 4  # micro-batches of answers queued for the Kafka client before the agent waits

T = TypeVar("T")


class Answered(NamedTuple):
    """An admitted event with its answer and the model version that answered it, ready to publish."""

    item: Admitted
    answer: Answer
    version: str


@contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Attribute table reads and writes to `event`'s partition.

    Faust sets its current event only while a stream is iterated one event at a time; batches (from
    `take_events` or `take_batches`) leave it unset and table writes then fail (faust-streaming #497).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def batch_window(linger_s: float, idle_s: float, last_handling_s: float) -> float:
    """How long the next micro-batch may stay open after its first event: as long as the last batch took
    to handle, but at least `idle_s` and at most `linger_s`.

    An event waits for the batch it joins to close, then for that batch to be handled. Holding a batch
    open for longer than handling takes only adds the first kind of wait: under a backlog handling is
    slow and batches fill up anyway, while at moderate rates a short window keeps the wait short. So
    batches grow with the load instead of every batch lingering the full `linger_s`.
    """
    return min(linger_s, max(idle_s, last_handling_s))


def handle_isolating_failures(
    events: Sequence[T], handle: Callable[[Sequence[T]], None], on_failure: Callable[[T, Exception], None]
) -> None:
    """Handle a batch; if that raises, handle its halves, and so on down to single events: every event
    that fails alone goes to `on_failure`, every other one is handled.

    One poison event (a valid message that trips a bug) must neither crash the worker nor hold back the
    rest of its batch: left unacked, it would stall its partition's commits and fail again after every
    restart. Bisection finds it in about 2 log2(batch) calls. A retried half may repeat answers its failed
    attempt already sent, with the same event_id (at-least-once); state updates are idempotent per event.
    """
    try:
        handle(events)
    except Exception as error:
        if len(events) == 1:
            on_failure(events[0], error)
            return
        middle = len(events) // 2
        handle_isolating_failures(events[:middle], handle, on_failure)
        handle_isolating_failures(events[middle:], handle, on_failure)


class BatchingStream(faust.Stream):
    """A Faust stream whose micro-batches close when the input pauses, not after a fixed wait."""

    async def take_batches(
        self, max_events: int, linger_s: float, idle_s: float
    ) -> AsyncIterator[list[EventT]]:
        """Batches of events, each closed as soon as it holds `max_events`, when no event has arrived
        for `idle_s`, or a window after its first event (`batch_window`: the last batch's handling time,
        within `idle_s`..`linger_s`). Events are acked only after the loop body has handled their batch.

        Faust's `take_events` waits a fixed time for a full batch. Events reach a stream at Faust's
        per-event pace (a few per millisecond), so a short wait gives small batches under load and a
        long one delays every event at low rates. Waiting only while events keep coming gives both:
        a batch grows while there is a backlog and goes out as soon as the input pauses. The buffering
        and acking are `take_events`' own.
        """
        events: list[EventT] = []
        arrived, full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
        consuming: asyncio.Future[None] | None = None

        async def add_to_batch(value: Any) -> Any:
            nonlocal consuming
            try:
                if consuming is not None:  # the last batch is being acked: wait until it is cleared
                    try:
                        await consuming
                    finally:
                        consuming = None
                event = self.current_event
                if event is None:
                    raise RuntimeError("the batch buffer found no current event")
                events.append(event)
                arrived.set()
                if len(events) >= max_events:
                    full.set()
                    consumed.clear()
                    await self.wait(consumed)  # never more than max_events in a batch
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self.log.exception("Error adding to the batch: %r", error)
                await self.crash(error)
            return value

        self.enable_acks = False  # acked below, after the batch is handled
        self.add_processor(add_to_batch)
        self._enable_passive(cast(faust.ChannelT, aiter(self.channel)))
        loop = asyncio.get_running_loop()
        window = linger_s
        while not self.should_stop:
            await self.wait_for_stopped(arrived)
            closes_at, seen = loop.time() + window, 0
            while len(events) > seen and not full.is_set() and (left := closes_at - loop.time()) > 0:
                seen = len(events)
                await self.wait_for_stopped(full, timeout=min(idle_s, left))  # (a timeout reads "stopped")
            if self.should_stop:
                break
            consuming = loop.create_future()
            handling_started = loop.time()
            try:
                yield list(events)
            finally:
                window = batch_window(linger_s, idle_s, loop.time() - handling_started)
                for event in events:
                    await self.ack(event)
                events.clear()
                arrived.clear()
                notify(consuming)
                full.clear()
                consumed.set()


class BatchStates(MutableMapping[str, UserState]):
    """The session table as one micro-batch sees it: decoded once, written back once per user.

    The table holds JSON under the user_id's UTF-8 bytes. A user with several events in a batch is
    read from RocksDB and decoded once, and written (RocksDB and changelog) once, with their last state,
    under their last event's partition. Nothing is committed before the batch is written back, so
    at-least-once delivery is unchanged.
    """

    def __init__(self, table: MutableMapping[bytes, Any]) -> None:
        self.table = table
        self.read: dict[str, UserState] = {}
        self.pending: dict[str, EventT] = {}  # users written in this batch -> their last event
        self.event: EventT | None = None  # the event being admitted (set by the caller)

    def __getitem__(self, user_id: str) -> UserState:
        if user_id not in self.read:
            with event_context(self.event) if self.event is not None else nullcontext():
                stored = self.table.get(user_id.encode("utf-8"))
            if stored is None:
                raise KeyError(user_id)
            self.read[user_id] = UserState.from_json(stored)
        return self.read[user_id]

    def __setitem__(self, user_id: str, state: UserState) -> None:
        if self.event is None:
            raise RuntimeError("BatchStates.event must name the event being admitted")
        self.read[user_id] = state
        self.pending[user_id] = self.event

    def __delitem__(self, user_id: str) -> None:
        raise TypeError("sessions are deleted by expiry, never within a batch")

    def __iter__(self) -> Iterator[str]:
        return (key.decode("utf-8") for key in self.table)

    def __len__(self) -> int:
        return len(self.table)

    def write_back(self) -> None:
        for user_id, event in self.pending.items():
            with event_context(event):
                self.table[user_id.encode("utf-8")] = self.read[user_id].to_json()
        self.pending.clear()


class _InputConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the input fetch timing taken from the app, and a count of the seeks
    that each fetch predates.

    - Fetch wait: Faust hard-codes 1,500 ms. A fetch sent while the worker is caught up sits at the broker
      for the whole wait on brokers that do not complete it when new data arrives, so events at low rates
      waited up to 1.5 s.
    - Prefetch backoff: fetched records wait in aiokafka until Faust asks for them, from the worker's
      event loop, which is busy while a batch is handled. Meanwhile aiokafka sends that broker no fetch
      for any partition, for up to 100 ms by default, so events arriving then waited for the pause: most
      of the p99 latency when the input rate rises. Shorter pauses cost more, smaller fetches under load.
    - Seeks: see `_InputConsumer`. Seeks and fetches both run on this thread's loop, so counting a
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


class _InputConsumer(faust_aiokafka.Consumer):
    """Faust's consumer, delivering no record that a restart's seek to the committed offsets would make
    Faust misread as an offset gap.

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

    _thread: _InputConsumerThread

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seeks_in_progress = 0  # Faust seeks from its recovery and from `getmany`, which may overlap
        self.not_seeking = asyncio.Event()
        self.not_seeking.set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _InputConsumerThread(self, loop=self.loop, beacon=self.beacon)

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

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        acks_enabled_for = self.app.topics.acks_enabled_for
        async for tp, message in super().getmany(timeout):
            if not self.not_seeking.is_set():
                await self.not_seeking.wait()
            if not (self._thread.fetched_before_a_seek(tp) and acks_enabled_for(tp.topic)):
                yield tp, message


class DrainingProducerBuffer(ProducerBuffer):
    """Faust's producer buffer, with a `flush` that returns only once every message buffered before it
    was called is with the Kafka client.

    Before committing input offsets Faust flushes this buffer, then the Kafka client. Faust's own buffer
    flush gives up as soon as no message has left the buffer for 0.1 s (a slow broker, a busy box) and
    ignores a message the buffer is handing over right then, so the commit could cover events whose
    answers were still buffered: a crash then lost those answers (seen as an unanswered event in the
    recovery test). Changelog records and dead letters are buffered (`send_soon`), so this flush is what
    makes them durable before a commit (answers take `AnswerOutbox`). Messages buffered after the flush
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
        flushed = self.buffered
        while self.handed_over < flushed:
            self.message_sent.clear()  # set by the buffer's sender after each message
            if await self.wait_for_stopped(self.message_sent):  # stopped or crashed meanwhile
                raise RuntimeError(
                    f"producer buffer stopped with {flushed - self.handed_over} messages unsent"
                )


def by_partition(records: Iterable[Record], partitions: Sequence[int]) -> dict[int, list[Record]]:
    """Records grouped by the partition their key hashes to, in order: murmur2, as the Kafka clients'
    default partitioner (so a user's answers land where a Java or librdkafka producer would put them)."""
    partitioner = DefaultPartitioner()
    of_key: dict[bytes, int] = {}  # a user with several events in a micro-batch is hashed once
    grouped: defaultdict[int, list[Record]] = defaultdict(list)
    for key, value in records:
        partition = of_key.get(key)
        if partition is None:
            partition = of_key[key] = partitioner(key, partitions, partitions)
        grouped[partition].append((key, value))
    return grouped


def forget_delivered(batches: set[asyncio.Future[Any]]) -> None:
    """Drop the settled batches from `batches`; raise if one of them was not delivered, so that the
    commit this precedes never passes an answer that is lost."""
    settled = {batch for batch in batches if batch.done()}
    batches -= settled
    for batch in settled:
        if batch.cancelled() or batch.exception() is not None:
            raise RuntimeError("a batch of answers was not delivered") from (
                None if batch.cancelled() else batch.exception()
            )


class AnswerOutbox(Service):
    """Micro-batches of answers on their way to the Kafka client, handed over in order by one task.

    aiokafka sends one request per broker at a time and queues one record batch per partition behind it,
    so handing answers over waits for the previous request's round trip: under load, up to a third of
    the agent's cycle. Queued here instead, they are handed over while the agent answers the next micro-batch.
    At most `max_waiting` batches wait; then `put` waits (backpressure). `drain`, which runs before every
    commit, waits for every batch put before it (not for later ones: under load the outbox never empties)
    and raises if one failed, so commits still cover handed-over answers only.
    """

    def __init__(
        self, send: Callable[[str, Sequence[Record]], Awaitable[None]], max_waiting: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.send = send
        self.waiting: asyncio.Queue[tuple[str, Sequence[Record]]] = asyncio.Queue(maxsize=max_waiting)
        self.put_count = 0
        self.handed_over = 0  # of the batches put (in order)
        self.progress = asyncio.Event()  # set after each hand-over
        self.failure: BaseException | None = None

    async def put(self, topic: str, records: Sequence[Record]) -> None:
        self._raise_failure()
        await self.waiting.put((topic, records))
        self.put_count += 1

    @Service.task
    async def _hand_over(self) -> None:
        while not self.should_stop:
            topic, records = await self.waiting.get()
            try:
                await self.send(topic, records)
            except Exception as error:  # the next put and every drain raise: no commit passes this batch
                log.exception("a batch of %d answers could not be handed to the Kafka client", len(records))
                self.failure = error
            self.handed_over += 1
            self.progress.set()

    async def drain(self) -> None:
        target = self.put_count
        while self.handed_over < target:
            self.progress.clear()
            if await self.wait_for_stopped(self.progress):
                raise RuntimeError(f"answer outbox stopped with {target - self.handed_over} batches waiting")
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self.failure is not None:
            raise RuntimeError("answers could not be handed to the Kafka client") from self.failure


class _DrainingProducer(faust_aiokafka.Producer):
    """Faust's producer with the draining buffer, and an outbox of record batches for the answers.

    Faust hands messages to the Kafka client one at a time (a buffer entry, a client call, a delivery
    future and sensor callbacks each): about a fifth of the worker's time when every event gets a 9 KB
    answer. `send_batches` builds the client's record batches directly, one call per partition; the
    agent queues them in `outbox`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.buffer = DrainingProducerBuffer(loop=self.loop, beacon=self.beacon)
        self.buffer.app = self.app
        self.batches_in_flight: set[asyncio.Future[Any]] = set()
        self.outbox = AnswerOutbox(
            self.send_batches, ANSWER_BATCHES_WAITING, loop=self.loop, beacon=self.beacon
        )

    async def on_start(self) -> None:
        await super().on_start()
        await self.add_runtime_dependency(self.outbox)

    async def send_batches(self, topic: str, records: Sequence[Record]) -> None:
        """Queue `records` (key, value) with the Kafka client as record batches, one per partition (more
        where the producer's batch size is reached). Returns once they are queued; `flush`, which Faust
        runs before every commit, waits for their delivery and raises if one failed."""
        if not records:
            return
        client = self._ensure_producer()
        partitions = sorted(await client.partitions_for(topic))
        for partition, partition_records in by_partition(records, partitions).items():
            batch = client.create_batch()
            for key, value in partition_records:
                if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, start another
                    self.batches_in_flight.add(await client.send_batch(batch, topic, partition=partition))
                    batch = client.create_batch()
                    batch.append(key=key, value=value, timestamp=None)  # an empty batch takes any record
            self.batches_in_flight.add(await client.send_batch(batch, topic, partition=partition))

    async def flush(self) -> None:
        await self.outbox.drain()
        await super().flush()  # the buffer, then the client: every batch queued before is now settled
        forget_delivered(self.batches_in_flight)


class _Transport(faust_aiokafka.Transport):
    Consumer = _InputConsumer
    Producer = _DrainingProducer


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
    """A Faust app whose Kafka consumer fetches input on the app's timing (`_InputConsumerThread`), whose
    producer delivers every queued answer and buffered message before input offsets are committed
    (`_DrainingProducer`), and whose flow control keeps buffered events when flow resumes without having
    been suspended (`ResumeOnceFlowControl`)."""

    def __init__(
        self, *args: Any, fetch_max_wait_ms: int, prefetch_backoff_ms: float, **options: Any
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.prefetch_backoff_ms = prefetch_backoff_ms
        super().__init__(*args, **options)

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _Transport(self.conf.broker_consumer, self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return ResumeOnceFlowControl(loop=self.loop)


def _credentials(settings: StreamSettings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            ssl_context=settings.ssl_context(),
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(settings.ssl_context())
    return None


def create_app(settings: StreamSettings) -> faust.App:
    """Create the topics, load the model, and wire the Faust app (not started)."""
    bootstrap = settings.aiokafka_options()["bootstrap_servers"]
    partitions = asyncio.run(ensure_topics(settings))
    models = ModelHolder(settings.model_dir)
    pipeline = Pipeline(settings)
    app = BundlecastApp(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        prefetch_backoff_ms=settings.prefetch_backoff_ms,
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        web_enabled=False,
        Stream=BatchingStream,
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_rebalance_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 6,
        broker_commit_interval=settings.commit_interval_s,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        # Our messages are JSON we build and validate ourselves; Faust only moves bytes.
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    # bytes keys are stored raw (the user_id's UTF-8, as in the input's key); values are JSON.
    sessions = app.Table(SESSIONS_TABLE, partitions=partitions, key_type=bytes)
    next_offsets: dict[int, int] = {}

    def letter_for(event: EventT, rejection: Rejection) -> bytes:
        message = event.message
        source_position = (message.topic, message.partition, message.offset)
        return dead_letter(message.key, message.value, rejection, source_position, datetime.now(UTC))

    def dead_letter_failure(event: EventT, error: Exception) -> None:
        """A valid event that could not be answered: logged, and dead-lettered with the error."""
        log.exception(
            "event at %s:%s:%s could not be answered",
            event.message.topic,
            event.message.partition,
            event.message.offset,
            exc_info=error,
        )
        metrics.DLQ_EVENTS.labels(reason="processing_error").inc()
        rejection = Rejection("processing_error", f"{type(error).__name__}: {error}")
        dlq.send_soon(key=event.message.key, value=letter_for(event, rejection))

    def answer_batch(events: Sequence[EventT], answered: list[Answered]) -> None:
        """Admit and answer `events`, dead-letter the malformed ones: all at the end, so that a failed
        attempt (retried in halves) sends no letter and adds no answer to `answered`."""
        now, started = time.time(), time.monotonic()
        admitted: list[Admitted] = []
        letters: list[tuple[bytes | None, bytes]] = []
        states = BatchStates(sessions)
        with metrics.observe_stage("state"):
            for event in events:
                message = event.message
                states.event = event
                outcome = pipeline.admit(message.key, message.value, states, message.time_in or started, now)
                if isinstance(outcome, Rejection):
                    letters.append((message.key, letter_for(event, outcome)))
                else:
                    admitted.append(outcome)
            states.write_back()
        recommender = models.current  # one version answers the whole batch
        answers = pipeline.answer(recommender, admitted, now) if admitted else []
        for key, letter in letters:
            dlq.send_soon(key=key, value=letter)
        answered.extend(
            Answered(item, answer, recommender.version)
            for item, answer in zip(admitted, answers, strict=True)
        )
        metrics.BATCH_SIZE.observe(len(events))
        for event in events:
            next_offsets[event.message.partition] = event.message.offset + 1

    async def publish(answered: Sequence[Answered]) -> None:
        """Each answer as its output message, into the producer's outbox (one record batch per partition)."""
        generated_at = datetime.now(UTC)
        messages: list[Record] = []
        for item, answer, version in answered:
            latency_s = time.monotonic() - item.arrived
            body = recommendation_message(item.event, version, answer, generated_at, latency_s * 1e3)
            messages.append((item.event.user_id.encode("utf-8"), body))
            metrics.END_TO_END_LATENCY.observe(latency_s)
            metrics.BUNDLES_PUBLISHED.inc(len(answer.bundles))
            for bundle in answer.bundles:
                metrics.BUNDLE_SIZE.observe(len(bundle.items))
        await cast(_DrainingProducer, app.producer).outbox.put(settings.output_topic, messages)
        metrics.RECOMMENDATIONS_PUBLISHED.inc(len(answered))

    @app.agent(source)
    async def recommend(stream: faust.StreamT) -> None:
        """Answer micro-batches. A batch's answers are in the outbox before its events are acked, and Faust
        flushes the producer (outbox, then client) before it commits, so a commit covers delivered answers."""
        batches = cast(BatchingStream, stream).take_batches(
            settings.batch_size, settings.batch_linger_s, settings.batch_idle_s
        )
        async for events in batches:
            answered: list[Answered] = []
            handle_isolating_failures(events, partial(answer_batch, answered=answered), dead_letter_failure)
            with metrics.observe_stage("publish"):
                await publish(answered)

    @app.task
    async def reload_on_sighup() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(models.reload_if_changed()))

    if settings.reload_interval_s > 0:

        @app.timer(settings.reload_interval_s)
        async def poll_model_version() -> None:
            await models.reload_if_changed()

    @app.timer(LAG_INTERVAL_S)
    async def report_lag() -> None:
        for tp in app.consumer.assignment():
            if tp.topic == settings.input_topic and tp.partition in next_offsets:
                lag = max(app.consumer.highwater(tp) - next_offsets[tp.partition], 0)
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set[faust.types.TP], **_: Any) -> None:
        for tp in revoked:
            if tp.topic == settings.input_topic:
                next_offsets.pop(tp.partition, None)
                metrics.forget_partitions(tp.topic, [tp.partition])

    @app.timer(min(60.0, settings.state_ttl_s / 2))
    async def expire_idle_users() -> None:
        """Delete users idle for longer than the TTL, locally and (tombstone) in the changelog.

        Outside stream iteration there is no event to take a partition from, so the tombstone goes to
        the partition the key hashes to, which is the user's input partition under the contract
        (key = user_id, default partitioner).
        """

        def delete(key: bytes) -> None:
            del sessions.data[key]
            sessions.send_changelog(None, key, None, value_serializer="raw")

        entries, deleted = await sweep_expired(
            sessions.items(), sessions.data.get, delete, time.time, settings.state_ttl_s
        )
        metrics.SESSION_EXPIRATIONS.inc(deleted)
        metrics.SESSION_STATE_ENTRIES.set(entries - deleted)

    return app


def run_worker(settings: StreamSettings, log_level: str = "warning") -> None:
    """Run a worker until SIGINT/SIGTERM; Faust then commits what was answered and closes cleanly."""
    import faiss
    import torch

    torch.set_num_threads(settings.compute_threads)
    faiss.omp_set_num_threads(settings.compute_threads)
    app = create_app(settings)
    if settings.metrics_port:
        metrics.start_metrics_server(settings.metrics_port)
    worker = faust.Worker(app, loglevel=log_level)
    # Faust's start-up spinner sets the root logger to DEBUG so that every record turns it, which makes
    # aiokafka and Faust build debug records on the hot path: about 3% of the worker's time under load.
    worker.spinner = None
    worker.execute_from_commandline()
