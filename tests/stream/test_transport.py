"""The Kafka transport of the worker (stream.transport): input fetch timing and seeks on a real broker
(Tansu), the producer's draining flush, answers as record batches through the outbox, and record delivery
without mode's race."""

from __future__ import annotations

import asyncio
import warnings
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from mode import Service

from stream.broker import EmbeddedBroker
from stream.transport import (
    AnswerOutbox,
    BundlecastApp,
    DrainingProducerBuffer,
    InputConsumerThread,
    by_partition,
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


def test_answers_are_grouped_by_the_partition_a_java_producer_picks_for_their_key_in_order() -> None:
    # murmur2 of these keys in Kafka's own tests (UtilsTest): -973932308, -790332482, 479470107.
    records = [(b"21", b"1"), (b"foobar", b"2"), (b"abc", b"3"), (b"21", b"4")]
    grouped = by_partition(records, [0, 1, 2, 3, 4, 5, 6])
    assert grouped == {
        (-973932308 & 0x7FFFFFFF) % 7: [(b"21", b"1"), (b"21", b"4")],
        (-790332482 & 0x7FFFFFFF) % 7: [(b"foobar", b"2")],
        (479470107 & 0x7FFFFFFF) % 7: [(b"abc", b"3")],
    }


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


def test_the_answer_outbox_hands_over_in_order_and_drains_what_was_put_before_the_drain() -> None:
    """Each hand-over takes a broker round trip here; a drain must wait for every batch put before it
    (the commit after it covers their events) but not for batches put while it waits."""
    handed_over: list[str] = []

    async def send(topic: str, records: Any) -> None:
        await asyncio.sleep(0.05)
        handed_over.append(records[0][1].decode())

    async def drain_while_putting() -> None:
        outbox = AnswerOutbox(send, max_waiting=8)
        await outbox.start()
        try:
            for n in range(3):
                await outbox.put("recommendations", [(b"u", str(n).encode())])
            draining = asyncio.create_task(outbox.drain())
            await asyncio.sleep(0.01)
            for n in range(3, 6):
                await outbox.put("recommendations", [(b"u", str(n).encode())])
            await draining
            assert handed_over == ["0", "1", "2"]
            await outbox.drain()
            assert handed_over == ["0", "1", "2", "3", "4", "5"]
        finally:
            await outbox.stop()

    asyncio.run(drain_while_putting())


def test_the_answer_outbox_holds_back_the_agent_when_full_and_fails_drains_after_a_lost_batch() -> None:
    release = asyncio.Event()

    async def send(topic: str, records: Any) -> None:
        await release.wait()
        if records[0][1] == b"lost":
            raise ConnectionError("broker gone")

    async def fill_then_fail() -> None:
        outbox = AnswerOutbox(send, max_waiting=1)
        await outbox.start()
        try:
            await outbox.put("recommendations", [(b"u", b"lost")])  # taken by the hand-over task
            await asyncio.sleep(0.01)
            await outbox.put("recommendations", [(b"u", b"next")])  # waits in the outbox
            blocked = asyncio.create_task(outbox.put("recommendations", [(b"u", b"third")]))
            await asyncio.sleep(0.01)
            assert not blocked.done()  # backpressure: the agent waits for room
            release.set()
            await blocked
            with pytest.raises(RuntimeError, match="could not be handed"):
                await outbox.drain()  # no commit may pass the lost batch
            with pytest.raises(RuntimeError, match="could not be handed"):
                await outbox.put("recommendations", [(b"u", b"after")])  # nor may the agent go on
        finally:
            await outbox.stop()

    asyncio.run(fill_then_fail())
