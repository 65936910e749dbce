"""The Kafka transport of the worker (stream.transport): input fetch timing and seeks on a real broker
(Tansu), the producer's draining flush, answers through their librdkafka producer, and record delivery
without mode's race."""

from __future__ import annotations

import asyncio
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import certifi
import confluent_kafka
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import DefaultPartitioner
from mode import Service

from stream.broker import EmbeddedBroker, free_port
from stream.config import StreamSettings
from stream.transport import (
    ANSWER_CLIENT_DEFAULTS,
    AnswerProducer,
    BundlecastApp,
    DrainingProducerBuffer,
    InputConsumerThread,
    first_turn_then_race,
    forget_delivered,
)


async def started_input_thread(
    broker: EmbeddedBroker, app_id: str, fetch_max_wait_ms: int = 5, prefetch_backoff_ms: float = 5
) -> InputConsumerThread:
    """The worker's input consumer thread, started against `broker` (its aiokafka consumer running)."""
    app = BundlecastApp(
        app_id,
        fetch_max_wait_ms=fetch_max_wait_ms,
        prefetch_backoff_ms=prefetch_backoff_ms,
        answer_client_options={"bootstrap.servers": broker.bootstrap},
        broker=f"kafka://{broker.bootstrap}",
        web_enabled=False,
    )
    thread = cast(InputConsumerThread, app.consumer._thread)
    await thread.on_start()
    return thread


def test_the_worker_consumer_fetches_on_the_configured_timing(kafka_broker: EmbeddedBroker) -> None:
    """Faust hard-codes a 1.5 s fetch wait and aiokafka a 100 ms prefetch backoff; the started input
    consumer must use the settings instead."""

    async def started_fetcher() -> tuple[int, float]:
        thread = await started_input_thread(kafka_broker, "fetch-timing-test", 7, 3)
        try:
            fetcher = thread._consumer._fetcher
            return fetcher._fetch_max_wait_ms, fetcher._prefetch_backoff
        finally:
            await thread._consumer.stop()

    assert asyncio.run(started_fetcher()) == (7, 0.003)


def test_the_worker_consumer_tells_records_fetched_before_a_seek_of_their_partition(
    kafka_broker: EmbeddedBroker,
) -> None:
    """Faust goes on delivering a fetch's records after a seek (a restart seeks back to the committed
    offsets) and counts the jump as processed offsets; the input consumer must tell those records apart,
    per partition, from the ones fetched after the seek."""
    first, second = TopicPartition("seek-test", 0), TopicPartition("seek-test", 1)

    async def fetch(
        thread: InputConsumerThread, consumer: AIOKafkaConsumer, partitions: set[TopicPartition]
    ) -> list[int]:
        """Offsets fetched until every partition's end (4 records each), partition by partition."""
        offsets: dict[TopicPartition, list[int]] = {tp: [] for tp in partitions}
        async with asyncio.timeout(30):
            while any(not found or found[-1] < 3 for found in offsets.values()):
                for tp, records in (await thread._fetch_records(consumer, partitions, timeout=5)).items():
                    offsets[tp] += [record.offset for record in records]
        return [offset for tp in sorted(partitions) for offset in offsets[tp]]

    async def seeks_seen() -> list[tuple[bool, bool]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("seek-test", 2, 1)])
        await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
        await producer.start()
        for n in range(8):
            await producer.send_and_wait("seek-test", f"r{n}".encode(), partition=n % 2)
        await producer.stop()
        thread = await started_input_thread(kafka_broker, "seek-test")
        consumer = thread._consumer
        seen = []

        def stale() -> tuple[bool, bool]:
            return thread.fetched_before_a_seek(first), thread.fetched_before_a_seek(second)

        try:
            consumer.assign([first, second])
            assert await fetch(thread, consumer, {first, second}) == [0, 1, 2, 3, 0, 1, 2, 3]
            seen.append(stale())
            consumer.seek(first, 1)
            seen.append(stale())
            assert await fetch(thread, consumer, {first}) == [1, 2, 3]
            seen.append(stale())
            await consumer.commit({second: 2})  # a restart: back to the committed offsets
            await consumer.seek_to_committed()
            seen.append(stale())
            assert await fetch(thread, consumer, {second}) == [2, 3]
            seen.append(stale())
        finally:
            await consumer.stop()
        return seen

    assert asyncio.run(seeks_seen()) == [
        (False, False),  # nothing seeked yet
        (True, False),  # the first partition's records came before its seek
        (False, False),  # fetched again from the new position
        (False, True),  # only the partition with a committed offset is seeked
        (False, False),
    ]


def test_a_producer_flush_waits_for_every_message_buffered_before_it_and_no_later_one() -> None:
    """Faust's own buffer flush returned after 0.1 s without progress, so a commit could pass answers
    still in the buffer; each hand-over here takes longer than that. Messages buffered while the flush
    waits are not its concern (under steady load the buffer never empties)."""
    handed_over: list[int] = []

    class SlowChannel:
        async def publish_message(self, fut: SimpleNamespace, wait: bool = False) -> None:
            await asyncio.sleep(0.15)
            handed_over.append(fut.message.value)

    def message(value: int) -> SimpleNamespace:
        return SimpleNamespace(message=SimpleNamespace(channel=SlowChannel(), value=value))

    async def flush_while_buffering() -> None:
        buffer = DrainingProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))
        await buffer.start()
        try:
            for n in range(3):
                buffer.put(message(n))
            await asyncio.sleep(0.01)  # the first message is being handed over, the queue holds two
            flushing = asyncio.create_task(buffer.flush())
            await asyncio.sleep(0.01)
            for n in range(3, 6):
                buffer.put(message(n))
            await flushing
            assert handed_over == [0, 1, 2]
            await buffer.flush()
            assert handed_over == [0, 1, 2, 3, 4, 5]
        finally:
            await buffer.stop()

    asyncio.run(flush_while_buffering())


def test_a_flush_forgets_delivered_batches_keeps_pending_ones_and_raises_for_a_lost_one() -> None:
    async def settle() -> None:
        loop = asyncio.get_running_loop()
        delivered, pending, lost = loop.create_future(), loop.create_future(), loop.create_future()
        delivered.set_result(None)
        batches = {delivered, pending}
        forget_delivered(batches)
        assert batches == {pending}
        lost.set_exception(ConnectionError("broker gone"))
        batches.add(lost)
        with pytest.raises(RuntimeError, match="not delivered"):
            forget_delivered(batches)
        assert batches == {pending}

    asyncio.run(settle())


class CountingRace:
    """mode's `wait_first` (the race of the consumer's drain loop), counting its calls."""

    def __init__(self) -> None:
        self.service, self.calls = Service(), 0

    async def __call__(self, *coros: Any) -> Any:
        self.calls += 1
        return await self.service.wait_first(*coros)


def test_a_record_callback_that_does_not_wait_is_delivered_without_the_race() -> None:
    async def deliver() -> None:
        race, suspended, delivered = CountingRace(), asyncio.Event(), []

        async def callback() -> str:
            delivered.append("record")
            return "done"

        results = await first_turn_then_race([callback(), suspended.wait()], race)
        assert results.done and results.results == ["done"] and not results.stopped
        assert delivered == ["record"] and race.calls == 0

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unstarted suspension wait is closed, not left unawaited
        asyncio.run(deliver())


def test_a_record_callback_that_waits_races_the_suspension_and_is_cancelled_by_it() -> None:
    async def deliver() -> None:
        race, suspended, buffer_has_room = CountingRace(), asyncio.Event(), asyncio.Event()
        delivered: list[str] = []

        async def callback() -> None:
            await buffer_has_room.wait()  # a full stream buffer
            delivered.append("record")

        delivering = asyncio.create_task(first_turn_then_race([callback(), suspended.wait()], race))
        await asyncio.sleep(0.01)
        assert race.calls == 1 and not delivering.done()
        suspended.set()  # a rebalance: the waiting delivery is abandoned
        await delivering
        buffer_has_room.set()
        await asyncio.sleep(0.01)
        assert delivered == []

    asyncio.run(deliver())


def test_a_record_callback_that_fails_at_once_raises_as_in_the_race() -> None:
    async def deliver() -> None:
        async def callback() -> None:
            raise ValueError("undecodable")

        with pytest.raises(ValueError, match="undecodable"):
            await first_turn_then_race([callback(), asyncio.Event().wait()], CountingRace())

    asyncio.run(deliver())


async def read_all(broker: EmbeddedBroker, topic: str, count: int) -> list[tuple[int, bytes, bytes]]:
    """The first `count` records of `topic`: (partition, key, value), in offset order per partition."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    read: list[tuple[int, bytes, bytes]] = []
    try:
        while len(read) < count:
            for tp, messages in (await consumer.getmany(timeout_ms=1000)).items():
                read.extend((tp.partition, m.key, m.value) for m in messages)
    finally:
        await consumer.stop()
    return read


def test_answers_are_delivered_before_a_drain_returns_to_the_partition_a_java_producer_picks_in_order(
    kafka_broker: EmbeddedBroker,
) -> None:
    """Every answer put before a drain is on the broker when the drain returns (a commit follows it), on
    the partition of the Java client's murmur2 partitioner, in the order put for each user."""
    keys = [b"21", b"foobar", b"abc"] + [f"user-{n}".encode() for n in range(20)]
    batches = [[(keys[(b * 7 + r) % len(keys)], f"{b}.{r}".encode()) for r in range(30)] for b in range(5)]

    async def put_then_drain() -> list[tuple[int, bytes, bytes]]:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
        await admin.start()
        await admin.create_topics([NewTopic("answers-delivery", 7, 1)])
        await admin.close()
        answers = AnswerProducer({"bootstrap.servers": kafka_broker.bootstrap})
        await answers.start()
        try:
            for batch in batches:
                await answers.put("answers-delivery", batch)
            await answers.drain()
            assert not answers.unsettled
        finally:
            await answers.stop()
        return await read_all(kafka_broker, "answers-delivery", 150)

    read = asyncio.run(put_then_drain())
    put = [record for batch in batches for record in batch]
    assert sorted(read) == sorted(
        (DefaultPartitioner()(key, list(range(7)), list(range(7))), key, value) for key, value in put
    )
    for key in keys:
        assert [v for _, k, v in read if k == key] == [v for k, v in put if k == key]


def unreachable(**options: Any) -> dict[str, Any]:
    """Client options for a broker that is not there: every record waits, then fails after
    `message.timeout.ms` if given."""
    return {"bootstrap.servers": f"127.0.0.1:{free_port()}", **options}


def test_a_drain_raises_when_an_answer_put_before_it_was_not_delivered_and_so_does_the_next_put() -> None:
    async def lose_a_batch() -> None:
        answers = AnswerProducer(unreachable(**{"message.timeout.ms": 50}))
        await answers.start()
        try:
            await answers.put("recommendations", [(b"u", b"lost")])
            with pytest.raises(RuntimeError, match="could not be delivered"):
                await answers.drain()  # no commit may pass the lost answer
            with pytest.raises(RuntimeError, match="could not be delivered"):
                await answers.put("recommendations", [(b"u", b"after")])  # nor may the agent go on
        finally:
            await answers.stop()

    asyncio.run(lose_a_batch())


def test_a_full_client_queue_holds_the_agent_back_and_a_stop_releases_it_with_an_error() -> None:
    async def fill() -> None:
        answers = AnswerProducer(unreachable(**{"queue.buffering.max.messages": 2}), stop_flush_s=0.01)
        await answers.start()
        blocked = asyncio.create_task(
            answers.put("recommendations", [(b"u", b"1"), (b"u", b"2"), (b"u", b"3")])
        )
        for _ in range(20):  # the put keeps polling for room that the missing broker never makes
            await asyncio.sleep(0)
        assert not blocked.done()
        assert answers.unsettled[0].unsettled == 3
        await answers.stop()
        with pytest.raises(RuntimeError, match="stopped with answers undelivered"):
            await blocked

    asyncio.run(fill())


def test_the_answers_client_connects_and_authenticates_as_the_settings_say() -> None:
    """The same settings as the aiokafka clients, in librdkafka's names, which librdkafka accepts."""
    settings = StreamSettings(
        kafka_bootstrap="kafka-1:9093,kafka-2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="bundlecast",
        kafka_sasl_password="secret",
        kafka_ssl_cafile=Path(certifi.where()),
        producer_max_batch_bytes=4096,
    )
    options = settings.answer_client_options()
    assert options == {
        "bootstrap.servers": "kafka-1:9093,kafka-2:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "bundlecast",
        "sasl.password": "secret",
        "ssl.ca.location": certifi.where(),
        "batch.size": 4096,
        "client.id": "bundlecast-answers",
    }
    confluent_kafka.Producer(options | ANSWER_CLIENT_DEFAULTS)  # raises on a name librdkafka does not know
    plaintext = StreamSettings(kafka_bootstrap="k:9092").librdkafka_options()
    assert plaintext == {"bootstrap.servers": "k:9092", "security.protocol": "PLAINTEXT"}
