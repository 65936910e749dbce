"""Does a broker hold what exactly-once needs? Kafka transactions, probed with aiokafka (the worker's client).

    python bench/broker_transactions.py                      # the embedded Tansu broker
    python bench/broker_transactions.py --bootstrap HOST:PORT # any other broker

Each round is one transaction: 10 records over 2 partitions and a group offset; every third round is aborted.
A read_committed reader must then see exactly the committed rounds' records, and the group the last
committed offset. Prints what held and exits 1 where something did not (issue #22, BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream.broker import embedded_broker


async def probe(bootstrap: str, rounds: int) -> bool:
    suffix = uuid.uuid4().hex[:8]
    output, source, group = f"txn-out-{suffix}", f"txn-in-{suffix}", f"txn-group-{suffix}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(output, 2, 1), NewTopic(source, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"txn-{suffix}")
    try:
        await producer.start()  # sends InitProducerId with the transactional id
    except Exception as error:  # any refusal is the answer being probed for
        print(f"InitProducerId with a transactional id refused: {error!r}")
        await producer.stop()
        return False
    committed_rounds, last_offset = set(), None
    try:
        for round_ in range(rounds):
            await producer.begin_transaction()
            for i in range(10):
                await producer.send(output, f"{round_}-{i}".encode(), partition=i % 2)
            await producer.send_offsets_to_transaction({TopicPartition(source, 0): round_ + 1}, group)
            if round_ % 3 == 2:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
                committed_rounds.add(round_)
                last_offset = round_ + 1
    finally:
        await producer.stop()
    reader = AIOKafkaConsumer(
        output, bootstrap_servers=bootstrap, isolation_level="read_committed", auto_offset_reset="earliest"
    )
    await reader.start()
    seen: list[str] = []
    try:
        for _ in range(25):  # 5 s of polls: the reader sees what it will see by then
            for records in (await reader.getmany(timeout_ms=200)).values():
                seen += [record.value.decode() for record in records]
    finally:
        await reader.stop()
    group_reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await group_reader.start()
    try:
        offset = await group_reader.committed(TopicPartition(source, 0))
    finally:
        await group_reader.stop()
    seen_rounds = [int(value.split("-")[0]) for value in seen]
    expected = 10 * len(committed_rounds)
    aborted_seen = sum(r not in committed_rounds for r in seen_rounds)
    print(
        f"committed records seen {len(seen) - aborted_seen} of {expected}; aborted ones seen {aborted_seen}"
    )
    print(f"group offset {offset} (committed {last_offset})")
    return len(seen) - aborted_seen == expected and aborted_seen == 0 and offset == last_offset


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bootstrap", help="a running broker; default: start the embedded Tansu broker")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if args.bootstrap:
        held = asyncio.run(probe(args.bootstrap, args.rounds))
    else:
        with embedded_broker() as broker:
            held = asyncio.run(probe(broker.bootstrap, args.rounds))
    print("transactions hold" if held else "transactions do not hold on this broker")
    sys.exit(0 if held else 1)


if __name__ == "__main__":
    main()
