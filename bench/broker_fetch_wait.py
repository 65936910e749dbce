"""Does the embedded broker answer a waiting fetch when a record arrives, or only when its wait ends?

One producer (linger 0) sends a record at irregular gaps while one consumer reads with a given
`fetch.max.wait.ms`; each record's send-to-read time is noted. A broker that wakes waiting fetches on
produce (Apache Kafka's fetch purgatory) reads every record within a few ms whatever the wait; one that
polls its log and sleeps in between delivers some records only at its next poll, up to the wait late.

    python bench/broker_fetch_wait.py --wait-ms 10 --wait-ms 100 --wait-ms 1000
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream.broker import embedded_broker


async def send_to_read_ms(bootstrap: str, wait_ms: int, records: int) -> np.ndarray:
    """Send-to-read ms of each record, on partition 0 of a topic of this run's own."""
    partition = TopicPartition(f"fetch-wait-{wait_ms}-{time.time_ns()}", 0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=wait_ms)
    await producer.start()
    await producer.send_and_wait(partition.topic, b"first", partition=0)  # creates the topic
    await consumer.start()
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        await consumer.getone()
        delays = []
        for n in range(records):
            await asyncio.sleep(0.017 * (1 + n % 7))  # gaps that fall anywhere in a fetch's wait
            sent = time.monotonic()
            await producer.send(partition.topic, b"x", partition=0)
            await consumer.getone()
            delays.append((time.monotonic() - sent) * 1e3)
        return np.array(delays)
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wait-ms", type=int, action="append", help="fetch.max.wait.ms (repeat)")
    parser.add_argument("--records", type=int, default=100)
    args = parser.parse_args()
    with embedded_broker() as broker:
        for wait_ms in args.wait_ms or [10, 100, 1000]:
            delays = asyncio.run(send_to_read_ms(broker.bootstrap, wait_ms, args.records))
            late = delays > 8.0
            p50, p90, p99 = np.percentile(delays, [50, 90, 99])
            print(
                f"fetch wait {wait_ms:>5} ms: send-to-read p50 {p50:.1f} / p90 {p90:.1f} / p99 {p99:.1f} / "
                f"max {delays.max():.1f} ms; {late.mean():.0%} of records over 8 ms"
            )


if __name__ == "__main__":
    main()
