"""The Faust worker: clickstream in, micro-batched answers out, per-user state in a RocksDB table.

Delivery is at-least-once: Faust commits an input offset only after the batch holding it was fully
handled (`BatchingStream.take_batches` acks after the loop body) and after flushing the producer (every
queued answer and buffered changelog record delivered: `stream.transport`), so every valid event is
answered before its offset is committed; a crash in between re-answers it with the same event_id.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, TypeVar, cast

import faust
from faust.streams import _current_event
from faust.types import EventT
from mode import CrashingSupervisor
from mode.utils.aiter import aiter
from mode.utils.futures import notify

from model import Recommender
from model.answers import Answer
from stream import metrics
from stream.answer import Answered, recommendation_message
from stream.config import StreamSettings
from stream.events import DlqReason, ForgetRequest, Rejection, dead_letter
from stream.health import Liveness, readiness
from stream.metrics import Check
from stream.models import ModelHolder
from stream.pipeline import Admitted, Pipeline, query_for
from stream.query import QueryTraffic, RecentAnswer, RecentAnswers, session_key
from stream.sessions import SessionPartitions
from stream.state import UserState, sweep_expired
from stream.topics import ensure_topics
from stream.transport import BundlecastApp, DrainingProducer
from stream.upstream import check_upstream
from stream.web import register_query_api, web_options

log = logging.getLogger(__name__)

SESSIONS_TABLE = "sessions"
LAG_INTERVAL_S = 5.0

T = TypeVar("T")


class Outgoing(NamedTuple):
    """An answered event's output record (key, value), with what its metrics need once it is published."""

    key: bytes
    value: bytes
    arrived: float  # time.monotonic() when its event reached the worker
    answer: Answer


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


async def handle_isolating_failures(
    events: Sequence[T],
    handle: Callable[[Sequence[T]], Awaitable[None]],
    on_failure: Callable[[T, Exception], None],
) -> None:
    """Handle a batch; if that raises, handle its halves, and so on down to single events: every event
    that fails alone goes to `on_failure`, every other one is handled.

    One poison event (a valid message that trips a bug) must neither crash the worker nor hold back the
    rest of its batch: left unacked, it would stall its partition's commits and fail again after every
    restart. Bisection finds it in about 2 log2(batch) calls. A retried half may repeat answers its failed
    attempt already sent, with the same event_id (at-least-once); state updates are idempotent per event.
    """
    try:
        await handle(events)
    except Exception as error:
        if len(events) == 1:
            on_failure(events[0], error)
            return
        middle = len(events) // 2
        await handle_isolating_failures(events[:middle], handle, on_failure)
        await handle_isolating_failures(events[middle:], handle, on_failure)


class BatchingStream(faust.Stream):
    """A Faust stream whose micro-batches close when the input pauses, not after a fixed wait."""

    async def take_batches(
        self, max_events: int, linger_s: float, idle_s: float, on_input: Callable[[], None] = lambda: None
    ) -> AsyncIterator[list[EventT]]:
        """Batches of events, each closed as soon as it holds `max_events`, when no event has arrived
        for `idle_s`, or a window after its first event (`batch_window`: the last batch's handling time,
        within `idle_s`..`linger_s`). Events are acked only after the loop body has handled their batch.

        Faust's `take_events` waits a fixed time for a full batch. Events reach a stream at Faust's
        per-event pace (a few per millisecond), so a short wait gives small batches under load and a
        long one delays every event at low rates. Waiting only while events keep coming gives both:
        a batch grows while there is a backlog and goes out as soon as the input pauses. The buffering
        and acking are `take_events`' own. `on_input` is called for every event that joins a batch.
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
                on_input()
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
    under their last event's partition. A deleted user (a forget request) is erased with `erase` wherever
    their state is, before the batch's writes. Nothing is committed before the batch is written back, so
    at-least-once delivery is unchanged.
    """

    def __init__(self, table: MutableMapping[bytes, Any], erase: Callable[[bytes], object]) -> None:
        self.table = table
        self.erase = erase
        self.read: dict[str, UserState] = {}
        self.pending: dict[str, EventT] = {}  # users written in this batch -> their last event
        self.erased: set[str] = set()  # users deleted in this batch (before any write of theirs)
        self.event: EventT | None = None  # the event being admitted (set by the caller)

    def __getitem__(self, user_id: str) -> UserState:
        if user_id not in self.read:
            if user_id in self.erased:
                raise KeyError(user_id)
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
        """Erase the user, whether or not a state is found: it may be in another partition held here."""
        self.read.pop(user_id, None)
        self.pending.pop(user_id, None)
        self.erased.add(user_id)

    def __iter__(self) -> Iterator[str]:
        return (key.decode("utf-8") for key in self.table)

    def __len__(self) -> int:
        return len(self.table)

    def write_back(self) -> None:
        for user_id in self.erased:
            self.erase(user_id.encode("utf-8"))
        self.erased.clear()
        for user_id, event in self.pending.items():
            with event_context(event):
                self.table[user_id.encode("utf-8")] = self.read[user_id].to_json()
        self.pending.clear()


def _credentials(settings: StreamSettings) -> faust.types.auth.CredentialsT | None:
    protocol = settings.kafka_security_protocol
    if protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.sasl_password_text,
            ssl_context=settings.ssl_context(),
            mechanism=settings.kafka_sasl_mechanism,
        )
    if protocol == "SSL":
        return faust.SSLCredentials(settings.ssl_context())
    return None


def create_app(settings: StreamSettings, liveness: Liveness) -> faust.App:
    """Load the model, create the topics, and wire the Faust app (not started); `liveness` learns of
    waiting input and handled batches. The model comes first: a missing one is a mistake to report
    before any connection is tried."""
    bootstrap = settings.aiokafka_options()["bootstrap_servers"]
    models = ModelHolder(settings.model_dir)
    partitions = asyncio.run(ensure_topics(settings))
    pipeline = Pipeline(settings)
    # Kept only for the query API: without it nobody asks, and keeping would cost a session key per user.
    recent_answers = RecentAnswers(settings.answer_cache_users if settings.web_port else 0)
    query_traffic = QueryTraffic(settings.query_idle_s)
    app = BundlecastApp(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        prefetch_backoff_ms=settings.prefetch_backoff_ms,
        answer_client_options=settings.answer_client_options(),
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        **web_options(settings),
        Stream=BatchingStream,
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_rebalance_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 6,
        broker_commit_interval=settings.commit_interval_s,
        recovery_consistency_check=settings.recovery_consistency_check,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        # Our messages are JSON we build and validate ourselves; Faust only moves bytes.
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    # bytes keys are stored raw (the user_id's UTF-8, as in the input's key); values are JSON.
    sessions = app.Table(SESSIONS_TABLE, partitions=partitions, key_type=bytes)
    held = SessionPartitions(
        sessions,
        lambda topic, grouped: cast(DrainingProducer, app.producer).send_to_partitions(topic, grouped),
    )
    next_offsets: dict[int, int] = {}
    if settings.web_port:
        register_query_api(
            app,
            sessions,
            held.state_of,
            models,
            lambda depth: pipeline.popularity.top(depth, time.time(), models.current.vocab),
            recent_answers,
            query_traffic,
            settings,
            liveness.check,
            readiness_of(app, settings.input_topic),
        )

    def letter_for(event: EventT, rejection: Rejection) -> tuple[bytes | None, bytes]:
        message = event.message
        source_position = (message.topic, message.partition, message.offset)
        return dead_letter(
            message.key,
            message.value,
            rejection,
            source_position,
            datetime.now(UTC),
            settings.dlq_payload_bytes,
        )

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
        key, letter = letter_for(event, Rejection("processing_error", f"{type(error).__name__}: {error}"))
        dlq.send_soon(key=key, value=letter)
        next_offsets[event.message.partition] = event.message.offset + 1

    answering = ThreadPoolExecutor(
        1, "answers", initializer=use_compute_threads, initargs=(settings.compute_threads,)
    )

    async def answer_admitted(
        recommender: Recommender, admitted: list[Admitted], now: float
    ) -> list[Answered]:
        """The batch's answers; while the query API is being asked (`QueryTraffic`), computed off the event
        loop (torch releases the GIL), so that queries are served while the forwards run: on the loop, each
        query waited for the whole batch (p99 23-25 ms at 200 queries/s beside 500 events/s, 7-11 ms off
        it). Off the loop, the forwards share the GIL with the loop's Kafka work, which costs the stream's
        own p99 at 500-1,000 events/s about 40% (BENCHMARKS.md, "Stream"), so otherwise it stays on it."""
        if not query_traffic.recent():  # (only the query API notes traffic)
            return pipeline.answer(recommender, admitted, now)
        metrics.BATCHES_OFF_LOOP.inc()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(answering, pipeline.answer, recommender, admitted, now)

    async def answer_batch(events: Sequence[EventT], outgoing: list[Outgoing]) -> None:
        """Admit and answer `events` down to their output messages, dead-letter the malformed ones, count
        them: all at the end, so that a failed attempt (retried in halves) sends no letter, adds nothing
        to `outgoing` and counts nothing. Every step that depends on a message's content runs here,
        inside the isolation of `handle_isolating_failures`; what is left to publish is bytes."""
        now, started = time.time(), time.monotonic()
        admitted: list[Admitted] = []
        letters: list[tuple[tuple[bytes | None, bytes], DlqReason]] = []
        erased = 0
        states = BatchStates(sessions, held.erase)
        with metrics.observe_stage("state"):
            for event in events:
                message = event.message
                states.event = event
                outcome = pipeline.admit(message.key, message.value, states, message.time_in or started, now)
                if isinstance(outcome, Rejection):
                    letters.append((letter_for(event, outcome), outcome.reason))
                elif isinstance(outcome, ForgetRequest):
                    recent_answers.forget(outcome.user_id)
                    erased += 1
                else:
                    admitted.append(outcome)
            states.write_back()
        recommender = models.current  # one version answers the whole batch
        answers = await answer_admitted(recommender, admitted, now) if admitted else []
        generated_at = datetime.now(UTC)
        messages = [
            Outgoing(
                item.event.user_id.encode("utf-8"),
                recommendation_message(
                    item.event,
                    recommender.version,
                    answered.content,
                    generated_at,
                    (time.monotonic() - item.arrived) * 1e3,
                ),
                item.arrived,
                answered.answer,
            )
            for item, answered in zip(admitted, answers, strict=True)
        ]
        for (key, letter), reason in letters:
            dlq.send_soon(key=key, value=letter)
            metrics.DLQ_EVENTS.labels(reason=reason).inc()
        for item, answered in zip(admitted, answers, strict=True):
            metrics.EVENTS_CONSUMED.labels(type=item.event.type).inc()
            metrics.COLD_START_ANSWERS.inc(answered.answer.cold_start)
        if recent_answers.capacity > 0:  # kept for the query API, once per user: the last event's state
            pairs = zip(admitted, answers, strict=True)
            answered_state = {item.event.user_id: (item.state, answered) for item, answered in pairs}
            for user_id, (state, answered) in answered_state.items():
                if not answered.answer.cold_start:
                    recent_answers.put(
                        user_id,
                        RecentAnswer(
                            recommender.version,
                            session_key(query_for(state)),
                            pipeline.k,
                            pipeline.bundle_count,
                            answered.content,
                            generated_at,
                        ),
                    )
        metrics.USERS_ERASED.inc(erased)
        outgoing.extend(messages)
        metrics.BATCH_SIZE.observe(len(events))
        metrics.BATCH_USERS.observe(len({item.event.user_id for item in admitted}))
        for event in events:
            next_offsets[event.message.partition] = event.message.offset + 1

    async def publish(outgoing: Sequence[Outgoing]) -> None:
        """The batch's output messages to the answers' Kafka client, which delivers them from its own
        threads (`AnswerProducer`)."""
        published = time.monotonic()
        for message in outgoing:
            metrics.END_TO_END_LATENCY.observe(published - message.arrived)
            metrics.BUNDLES_PUBLISHED.inc(len(message.answer.bundles))
            for bundle in message.answer.bundles:
                metrics.BUNDLE_SIZE.observe(len(bundle.items))
        records = [(message.key, message.value) for message in outgoing]
        await cast(DrainingProducer, app.producer).answers.put(settings.output_topic, records)
        metrics.RECOMMENDATIONS_PUBLISHED.inc(len(outgoing))

    # An exception that escapes the agent (only a failed hand-over to Kafka can: everything that depends
    # on a message is isolated above) stops the worker, so that it restarts from its last commit. Faust's
    # default restarts the agent alone, which resumed answering nothing while the process lived on.
    @app.agent(source, supervisor_strategy=CrashingSupervisor)
    async def recommend(stream: faust.StreamT) -> None:
        """Answer micro-batches. A batch's answers are with the answers' client before its events are acked,
        and Faust flushes the producer (answers, then its own client) before it commits, so a commit covers
        delivered answers."""
        batches = cast(BatchingStream, stream).take_batches(
            settings.batch_size, settings.batch_linger_s, settings.batch_idle_s, liveness.input_waiting
        )
        async for events in batches:
            outgoing: list[Outgoing] = []
            await handle_isolating_failures(
                events, partial(answer_batch, outgoing=outgoing), dead_letter_failure
            )
            with metrics.observe_stage("publish"):
                await publish(outgoing)
            liveness.progressed()

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
        if app.rebalancing:  # restoring tables: progress, not a stall
            liveness.progressed()
            return
        for tp in app.consumer.assignment():
            if tp.topic == settings.input_topic and tp.partition in next_offsets:
                lag = max(app.consumer.highwater(tp) - next_offsets[tp.partition], 0)
                metrics.CONSUMER_LAG.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
                if lag:
                    liveness.input_waiting()

    @app.on_partitions_revoked.connect
    async def forget_revoked(_app: faust.App, revoked: set[faust.types.TP], **_: Any) -> None:
        for tp in revoked:
            if tp.topic == settings.input_topic:
                next_offsets.pop(tp.partition, None)
                metrics.forget_partitions(tp.topic, [tp.partition])

    @app.timer(min(60.0, settings.state_ttl_s / 2))
    async def expire_idle_users() -> None:
        """Delete users idle for longer than the TTL, locally and with a tombstone in the changelog partition
        that holds them (`stream.sessions`), in short slices between which the worker answers."""
        seen, deleted = await sweep_expired(
            held.held(),
            held.stored_from,
            held.expire,
            time.time,
            settings.state_ttl_s,
            after_slice=held.send_tombstones,
        )
        metrics.SESSION_EXPIRATIONS.inc(deleted)
        metrics.SESSION_STATE_ENTRIES.set(seen - deleted)

    return app


def readiness_of(app: faust.App, input_topic: str) -> Check:
    """The worker's readiness check (`stream.health.readiness`), counting the input partitions it holds."""

    def held() -> int:
        return sum(tp.topic == input_topic for tp in app.assignor.assigned_actives())

    return partial(readiness, held)


def use_compute_threads(threads: int) -> None:
    """Threads for torch and FAISS in the calling thread: OpenMP keeps FAISS's count per thread, so each
    thread that answers sets it (a new thread would spin up one OpenMP thread per core)."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def run_worker(settings: StreamSettings, log_level: str = "warning") -> None:
    """Run a worker until SIGINT/SIGTERM; Faust then commits what was answered and closes cleanly."""
    check_upstream()
    use_compute_threads(settings.compute_threads)
    liveness = Liveness(settings.liveness_stall_s)
    app = create_app(settings, liveness)
    if settings.metrics_port:
        metrics.start_metrics_server(
            settings.metrics_port, liveness=liveness.check, readiness=readiness_of(app, settings.input_topic)
        )
    worker = faust.Worker(app, loglevel=log_level)
    # Faust's start-up spinner sets the root logger to DEBUG so that every record turns it, which makes
    # aiokafka and Faust build debug records on the hot path: about 3% of the worker's time under load.
    worker.spinner = None
    worker.execute_from_commandline()
