"""The latency floor of the stream's two Kafka hops, with no worker: what `bundlecast bench` would measure
if answering took no time.

A relay process consumes the input topic through aiokafka with the worker's input fetch wait and prefetch
backoff (`BUNDLECAST_FETCH_MAX_WAIT_MS`, `BUNDLECAST_PREFETCH_BACKOFF_MS`) and produces one 9 KB message
per event to the output topic through the worker's answer client (`AnswerProducer`, librdkafka), one `put`
per fetched batch; the bench's own producer and reader (`stream.bench`) offer events at fixed rates and
time each from just before it is sent to the moment its relayed message is read, as the stream table does.
Broker, relay and bench share this machine. Prints one JSON line per rate.

    python bench/kafka_hops.py [--rate 200 --rate 500 --rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer

from stream.bench import AnswerClock
from stream.config import StreamSettings
from stream.launch import broker_for
from stream.replay import produce_at_rate
from stream.topics import ensure_topics
from stream.transport import AnswerProducer

ANSWER_PAD = "x" * (9 * 1024)  # a complete answer's size


async def relay(settings: StreamSettings) -> None:
    """Consume events, produce a 9 KB message for each, keyed like the worker's answers."""
    consumer = AIOKafkaConsumer(
        settings.input_topic,
        **settings.aiokafka_options(),
        group_id="kafka-hops-relay",
        auto_offset_reset="earliest",
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )
    answers = AnswerProducer(settings.answer_client_options())
    await consumer.start()
    consumer._fetcher._prefetch_backoff = settings.prefetch_backoff_ms / 1000  # as `InputConsumerThread`
    await answers.start()
    while True:
        for messages in (await consumer.getmany(timeout_ms=100)).values():
            records = []
            for message in messages:
                event = orjson.loads(message.value)
                answer = {"event_id": event["event_id"], "latency_ms": 0.0, "pad": ANSWER_PAD}
                records.append((message.key, orjson.dumps(answer)))
            await answers.put(settings.output_topic, records)


def run_relay(settings: StreamSettings) -> None:
    asyncio.run(relay(settings))


async def offer(settings: StreamSettings, clock: AnswerClock, rate: float, count: int, run: str) -> dict:
    sent: dict[str, float] = {}
    records = [
        (f"user{n % 500}".encode(), orjson.dumps({"event_id": f"{run}-{n}", "user_id": f"user{n % 500}"}))
        for n in range(count)
    ]
    await produce_at_rate(
        settings,
        iter(records),
        rate,
        lambda r: sent.__setitem__(orjson.loads(r[1])["event_id"], time.monotonic()),
    )
    await clock.wait_for(sent, 60.0)
    latencies = np.array([(clock.received[e].at - sent[e]) * 1e3 for e in sent if e in clock.received])
    return {
        "rate": rate,
        "events": count,
        "relayed": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(float(np.percentile(latencies, 99)), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, action="append", help="offered events/s (repeat)")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    with broker_for(StreamSettings()) as settings:
        asyncio.run(ensure_topics(settings))
        process = multiprocessing.get_context("spawn").Process(
            target=run_relay, args=(settings,), daemon=True
        )
        process.start()
        try:

            async def drive() -> None:
                async with AnswerClock(settings) as clock:
                    await offer(settings, clock, 50, 100, "warm-up")  # the relay has joined and relays
                    for rate in args.rate or [200.0, 500.0, 1000.0]:
                        print(
                            json.dumps(
                                await offer(settings, clock, rate, int(rate * args.seconds), f"r{rate}")
                            )
                        )

            asyncio.run(drive())
        finally:
            process.kill()


if __name__ == "__main__":
    main()
