"""The Faust worker: clickstream in, micro-batched answers out, per-user state in a RocksDB table.

Delivery is at-least-once: Faust commits an input offset only after the batch holding it was fully
handled (`take_events` acks after the loop body) and after flushing the producer, so every valid event
is answered before its offset is committed; a crash in between re-answers it with the same event_id.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import weakref
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from typing import Any, cast

import faust
from aiokafka import AIOKafkaConsumer
from faust.streams import _current_event
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import EventT

from stream import metrics
from stream.answer import recommendation_message
from stream.config import StreamSettings
from stream.events import Rejection, dead_letter
from stream.models import ModelHolder
from stream.pipeline import Admitted, Pipeline
from stream.state import is_expired
from stream.topics import ensure_topics

log = logging.getLogger(__name__)

SESSIONS_TABLE = "sessions"
LAG_INTERVAL_S = 5.0


@contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Attribute table reads and writes to `event`'s partition.

    Faust sets its current event only while a stream is iterated one event at a time; batches from
    `take_events` leave it unset and table writes then fail (faust-streaming issue #497).
    """
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class BatchStates(MutableMapping[bytes, Any]):
    """The session table as one micro-batch sees it: read through, written back once per user.

    A user with several events in a batch is decoded from RocksDB once and written (RocksDB and
    changelog) once, with their last state, under their last event's partition. Nothing is committed
    before the batch is written back, so at-least-once delivery is unchanged.
    """

    def __init__(self, table: MutableMapping[bytes, Any]) -> None:
        self.table = table
        self.pending: dict[bytes, tuple[Any, EventT]] = {}
        self.event: EventT | None = None  # the event being admitted (set by the caller)

    def __getitem__(self, key: bytes) -> Any:
        if key in self.pending:
            return self.pending[key][0]
        return self.table[key]

    def __setitem__(self, key: bytes, value: Any) -> None:
        if self.event is None:
            raise RuntimeError("BatchStates.event must name the event being admitted")
        self.pending[key] = (value, self.event)

    def __delitem__(self, key: bytes) -> None:
        raise TypeError("sessions are deleted by expiry, never within a batch")

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.table)

    def __len__(self) -> int:
        return len(self.table)

    def get(self, key: bytes, default: Any = None) -> Any:
        if key in self.pending:
            return self.pending[key][0]
        with event_context(self.event) if self.event is not None else nullcontext():
            return self.table.get(key, default)

    def write_back(self) -> None:
        for key, (value, event) in self.pending.items():
            with event_context(event):
                self.table[key] = value
        self.pending.clear()


class _ShortFetchConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's consumer thread with the input fetch wait taken from the app (Faust hard-codes 1,500 ms).

    With a long wait, a fetch sent while the worker is caught up sits at the broker for the whole wait on
    brokers that do not complete it when new data arrives, so events at low rates waited up to 1.5 s.
    """

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = cast(BundlecastApp, self.app).fetch_max_wait_ms  # read at start()
        return consumer


class _ShortFetchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ShortFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _ShortFetchTransport(faust_aiokafka.Transport):
    Consumer = _ShortFetchConsumer


class BundlecastApp(faust.App):
    """A Faust app whose Kafka consumer waits at most `fetch_max_wait_ms` for input."""

    def __init__(self, *args: Any, fetch_max_wait_ms: int, **options: Any) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **options)

    def _new_transport(self) -> faust_aiokafka.Transport:
        return _ShortFetchTransport(self.conf.broker_consumer, self)


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
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.state_dir),
        web_enabled=False,
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_rebalance_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=settings.kafka_session_timeout_s / 6,
        producer_max_batch_size=settings.producer_max_batch_bytes,
        # Our messages are JSON we build and validate ourselves; Faust only moves bytes.
        key_serializer="raw",
        value_serializer="raw",
    )
    source = app.topic(settings.input_topic, key_serializer="raw", value_serializer="raw")
    output = app.topic(settings.output_topic, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="raw")
    # bytes keys are stored raw (the user_id's UTF-8, as in the input's key); values are JSON.
    sessions = app.Table(SESSIONS_TABLE, partitions=partitions, key_type=bytes)
    next_offsets: dict[int, int] = {}

    async def handle(events: Sequence[EventT]) -> None:
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
                    source_position = (message.topic, message.partition, message.offset)
                    letters.append(
                        (
                            message.key,
                            dead_letter(
                                message.key, message.value, outcome, source_position, datetime.now(UTC)
                            ),
                        )
                    )
                else:
                    admitted.append(outcome)
            states.write_back()
        recommender = models.current  # one version answers the whole batch
        answers = pipeline.answer(recommender, admitted, now) if admitted else []
        with metrics.observe_stage("publish"):
            for key, letter in letters:
                dlq.send_soon(key=key, value=letter)
            generated_at = datetime.now(UTC)
            for item, answer in zip(admitted, answers, strict=True):
                latency_s = time.monotonic() - item.arrived
                body = recommendation_message(
                    item.event, recommender.version, answer, generated_at, latency_s * 1e3
                )
                output.send_soon(key=item.event.user_id.encode("utf-8"), value=body)
                metrics.END_TO_END_LATENCY.observe(latency_s)
                metrics.BUNDLES_PUBLISHED.inc(len(answer.bundles))
                for bundle in answer.bundles:
                    metrics.BUNDLE_SIZE.observe(len(bundle.items))
        metrics.RECOMMENDATIONS_PUBLISHED.inc(len(admitted))
        metrics.BATCH_SIZE.observe(len(events))
        for event in events:
            next_offsets[event.message.partition] = event.message.offset + 1

    @app.agent(source)
    async def recommend(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_linger_s):
            await handle(events)

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
        now = time.time()
        entries = 0
        expired = []
        for key, value in sessions.items():
            entries += 1
            if is_expired(value, now, settings.state_ttl_s):
                expired.append(key)
        for key in expired:
            del sessions.data[key]
            sessions.send_changelog(None, key, None, value_serializer="raw")
        metrics.SESSION_EXPIRATIONS.inc(len(expired))
        metrics.SESSION_STATE_ENTRIES.set(entries - len(expired))

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
