"""The worker end to end on a real broker (Tansu) and real RocksDB, run as `bundlecast worker` processes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import signal
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from model.artifacts import resolve_version
from stream.broker import EmbeddedBroker, free_port
from stream.schemas import load_schema
from stream.state import UserState
from stream.worker import BatchStates, batch_window, handle_isolating_failures, use_compute_threads
from tests.conftest import PublishCopy
from tests.stream.workers import Worker

ANSWER_TIMEOUT_S = 90.0
FAULT_INJECTION = Path(__file__).parent / "fault_injection"
ConsumedRecords = dict[str, list[dict]]


def event(n: int, user: str, item: str, kind: str = "view") -> tuple[bytes, bytes]:
    body = {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": kind, "ts": 1_300_000_000 + n}
    return user.encode(), json.dumps(body).encode()


async def produce(
    broker: EmbeddedBroker,
    records: list[tuple[bytes | None, bytes]],
    rate: float = 0,
    partition: int | None = None,
) -> list[tuple[int, int]]:
    """Send `records` to the input topic (to `partition`, else where the key hashes); return where each
    landed (partition, offset)."""
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        sent = []
        for key, value in records:
            sent.append(await producer.send("clickstream", key=key, value=value, partition=partition))
            if rate:
                await asyncio.sleep(1 / rate)
        await producer.flush()
        return [((metadata := await future).partition, metadata.offset) for future in sent]
    finally:
        await producer.stop()


async def input_offsets(broker: EmbeddedBroker) -> dict[int, tuple[int, int | None]]:
    """The input topic's end offset and the worker group's committed offset (None: none yet), per partition.

    Read by a consumer that names the worker's group but never joins it, so it moves no partition. Tansu
    reports a record batch's base offset + 1 as the end of its partition, so "end" can be low when records
    were produced in batches of several."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id="bundlecast", enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [
            TopicPartition("clickstream", p)
            for p in sorted(consumer.partitions_for_topic("clickstream") or ())
        ]
        ends = await consumer.end_offsets(partitions)
        return {tp.partition: (ends[tp], await consumer.committed(tp)) for tp in partitions}
    finally:
        await consumer.stop()


async def wait_for_a_commit(broker: EmbeddedBroker) -> None:
    """Block until the worker group has committed an input offset."""
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while not any(committed for _, committed in (await input_offsets(broker)).values()):
        assert time.monotonic() < deadline, "the worker committed no input offset"
        await asyncio.sleep(0.1)


async def consume(
    broker: EmbeddedBroker, done: Callable[[ConsumedRecords], bool], settle_s: float = 2.0
) -> ConsumedRecords:
    """Read the output and DLQ topics from the start until `done(records)` (or a timeout), then `settle_s`
    longer so that anything extra (a duplicate) would be seen too."""
    consumer = AIOKafkaConsumer(
        "recommendations", "clickstream.dlq", bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    records: ConsumedRecords = {"recommendations": [], "clickstream.dlq": []}
    await consumer.start()
    try:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        settled: float | None = None
        while time.monotonic() < (settled or deadline):
            for tp, messages in (await consumer.getmany(timeout_ms=200)).items():
                partitions = len(consumer.partitions_for_topic(tp.topic) or ())
                records[tp.topic].extend(
                    json.loads(m.value) | {"_key": m.key, "_partition": (tp.partition, partitions)}
                    for m in messages
                )
            if settled is None and done(records):
                settled = time.monotonic() + settle_s
    finally:
        await consumer.stop()
    return records


def wait_until_answering(broker: EmbeddedBroker) -> None:
    """Block until the worker has joined the group and answers (a warm-up event from a separate user)."""
    asyncio.run(produce(broker, [event(-1, "warm-up-user", "warm-up-item")]))
    asyncio.run(consume(broker, lambda r: "e-1" in answered(r), settle_s=0))


def answered(records: ConsumedRecords) -> set[str]:
    return {r["event_id"] for r in records["recommendations"]}


def known_items(artifact_root: Path, n: int) -> list[str]:
    return json.loads((resolve_version(artifact_root) / "vocab.json").read_text())[:n]


MALFORMED: list[tuple[bytes | None, bytes, str]] = [
    (b"m", b"\xff\xfe not utf-8", "not_utf8"),
    (b"m", b"{broken", "not_json"),
    (b"m", b'"just a string"', "not_an_object"),
    (b"m", json.dumps({"event_id": "x1", "user_id": "m", "type": "view", "ts": 1}).encode(), "missing_field"),
    (
        b"m",
        json.dumps({"event_id": 7, "user_id": "m", "item_id": "a", "type": "view", "ts": 1}).encode(),
        "wrong_type",
    ),
    (
        b"m",
        json.dumps({"event_id": "x2", "user_id": "m", "item_id": "a", "type": "click", "ts": 1}).encode(),
        "unknown_type",
    ),
    (
        b"m",
        json.dumps(
            {"event_id": "x3", "user_id": "m", "item_id": "a" * 300, "type": "view", "ts": 1}
        ).encode(),
        "id_too_long",
    ),
    (
        b"m",
        json.dumps(
            {"event_id": "x4", "user_id": "m", "item_id": "a", "type": "view", "ts": 1, "pad": "x" * 70_000}
        ).encode(),
        "too_large",
    ),
]


def test_every_valid_event_is_answered_once_and_every_malformed_one_dead_lettered(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    items = known_items(artifact_root, 30)
    users = [f"user{u}" for u in range(6)]
    valid = [event(n, users[n % 6], items[n % 30] if n % 7 else f"unknown-{n}") for n in range(120)]
    valid[-1] = event(119, "user5", items[1], "purchase")
    # Two waves, so that a user's later answers come from later batches than their first ones (events of
    # one user that share a batch share its answer).
    asyncio.run(produce(kafka_broker, [*valid[:60], *[(k, v) for k, v, _ in MALFORMED]]))
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", tmp_path / "worker.log"))
    asyncio.run(consume(kafka_broker, lambda r: len(r["recommendations"]) >= 60, settle_s=0))
    asyncio.run(produce(kafka_broker, valid[60:]))

    records = asyncio.run(
        consume(kafka_broker, lambda r: len(r["recommendations"]) >= 120 and len(r["clickstream.dlq"]) >= 8)
    )

    answers = records["recommendations"]
    assert sorted(r["event_id"] for r in answers) == sorted(f"e{n}" for n in range(120))
    schema = load_schema("recommendation")
    for answer in answers:
        key, (partition, partitions) = answer.pop("_key"), answer.pop("_partition")
        jsonschema.validate(answer, schema)
        assert key == answer["user_id"].encode() and answer["items"]
        assert partition == (murmur2(key) & 0x7FFFFFFF) % partitions  # a Java producer's choice for the key
    letters = records["clickstream.dlq"]
    assert sorted(r["reason"] for r in letters) == sorted(reason for _, _, reason in MALFORMED)
    for letter in letters:
        letter.pop("_key"), letter.pop("_partition")
        jsonschema.validate(letter, load_schema("dlq"))

    # State: the last event purchased items[1]; that answer must not offer it, the user's earlier ones could.
    by_event = {r["event_id"]: r for r in answers}
    assert items[1] not in {i["item_id"] for i in by_event["e119"]["items"]}
    # A user whose history holds known items is answered by the model even for an unknown item.
    assert by_event["e7"]["items"][0]["reasons"]["code"] in ("personalized", "repeat")
    assert by_event["e0"]["items"] != by_event["e114"]["items"]  # same user, longer history, new answer
    # Bundles exactly for the answers made from a known item (the model's, not popularity's); so for every
    # answer once the user has a known item (an answer may also see the user's later events of its batch).
    has_known: set[str] = set()
    for n in range(120):
        user, answer = users[n % 6], by_event[f"e{n}"]
        if n % 7 or n == 119:
            has_known.add(user)
        from_model = answer["items"][0]["reasons"]["code"] != "popular"
        assert bool(answer["bundles"]) == from_model and (from_model or user not in has_known), answer


def test_recovery_after_a_crash_and_onto_an_empty_state_dir(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    items = known_items(artifact_root, 40)
    users = [f"user{u}" for u in range(4)]
    history = [event(n, users[n % 4], items[n]) for n in range(20)]
    purchases = [event(20 + u, user, items[30 + u], "purchase") for u, user in enumerate(users)]
    asyncio.run(produce(kafka_broker, history + purchases))
    state_dir = tmp_path / "state"
    log = tmp_path / "worker.log"
    settings = {
        "producer_max_batch_bytes": "1",  # see StreamSettings.producer_max_batch_bytes
        "commit_interval_s": "0.1",  # commits well before the crash
    }
    workers.append(Worker(kafka_broker, artifact_root, state_dir, log, **settings))
    asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 24, settle_s=0))

    # Crash (SIGKILL) while a second stream of events is being answered.
    stream = [event(100 + n, users[n % 4], items[n % 20]) for n in range(150)]

    async def crash_mid_stream() -> None:
        producing = asyncio.create_task(produce(kafka_broker, stream, rate=150))
        await consume(kafka_broker, lambda r: len(answered(r)) >= 24 + 30, settle_s=0)
        await wait_for_a_commit(kafka_broker)  # the restart then resumes from commits, not from the start
        workers[-1].stop(signal.SIGKILL)
        await producing

    asyncio.run(crash_mid_stream())
    committed_before_restart = asyncio.run(input_offsets(kafka_broker))
    workers.append(Worker(kafka_broker, artifact_root, state_dir, log, **settings))
    expected = {f"e{n}" for n in range(24)} | {f"e{100 + n}" for n in range(150)}
    records = asyncio.run(consume(kafka_broker, lambda r: answered(r) >= expected, settle_s=0))
    missing = sorted(expected - answered(records))
    assert answered(records) == expected, (  # nothing unanswered, and nothing but these ids
        f"unanswered {missing[:10]}... ({len(missing)}); (end, committed) by partition before the restart "
        f"{committed_before_restart}, now {asyncio.run(input_offsets(kafka_broker))}; "
        f"worker log ends:\n{log.read_text()[-6000:]}"
    )
    workers[-1].stop()

    # A new worker with an empty state dir restores the sessions from the changelog: an event for an
    # unknown item is answered from the restored history, without the items bought before the crash.
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "fresh-state", log, **settings))
    probes = [event(500 + u, user, f"brand-new-{u}") for u, user in enumerate(users)]
    landed = asyncio.run(produce(kafka_broker, probes))
    records = asyncio.run(
        consume(kafka_broker, lambda r: answered(r) >= expected | {"e500", "e501", "e502", "e503"})
    )
    unanswered = {f"e{500 + u}" for u in range(4)} - answered(records)
    assert not unanswered, (
        f"{sorted(unanswered)} unanswered; probes landed at (partition, offset) {landed}; "
        f"(end, committed) by partition {asyncio.run(input_offsets(kafka_broker))}; "
        f"worker log ends:\n{log.read_text()[-4000:]}"
    )
    last = {r["event_id"]: r for r in records["recommendations"]}
    for u in range(4):
        answer = last[f"e{500 + u}"]
        assert answer["items"][0]["reasons"]["code"] in ("personalized", "repeat"), answer
        assert items[30 + u] not in {i["item_id"] for i in answer["items"]}


@pytest.mark.parametrize("fault", ["slow_resume", "slow_seek"])
def test_a_worker_restoring_its_table_answers_the_events_that_arrive_around_its_seek(
    fault: str,
    kafka_broker: EmbeddedBroker,
    artifact_root: Path,
    workers: list[Worker],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker restoring its table from the changelog is already fetching input when Faust, done
    restoring, seeks the input to the committed offsets and then resumes the flow. Each fault injection
    widens one window, and Faust alone fails both:
    - `slow_resume`: events buffered when the flow resumes; Faust's resume drops them, and commits past.
    - `slow_seek`: events delivered while the seek is still looking up committed offsets; Faust then
      resets its read offsets behind them and counts the next jump as processed (an offset gap, which
      lets a commit pass events not answered yet)."""
    items = known_items(artifact_root, 64)
    log, gaps = tmp_path / "worker.log", tmp_path / "gaps.log"
    monkeypatch.setenv("FAULT_GAP_LOG", str(gaps))

    def produce_events(numbers: range) -> None:
        """Events of four users, so that later events land on the partitions of earlier ones."""
        asyncio.run(produce(kafka_broker, [event(n, f"user{n % 4}", items[n]) for n in numbers]))

    produce_events(range(8))
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", log))
    asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 8, settle_s=0))
    workers[-1].stop()  # commits, and leaves a changelog to restore

    produce_events(range(8, 48))
    restoring = tmp_path / "empty-state"  # restores from the changelog
    workers.append(Worker(kafka_broker, artifact_root, restoring, log, FAULT_INJECTION / fault))
    asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 40, settle_s=0))
    # The same users' partitions, past the seek: a gap behind a record delivered during it shows here.
    produce_events(range(48, 64))
    records = asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 64, settle_s=0))
    missing = sorted({f"e{n}" for n in range(64)} - answered(records), key=lambda e: int(e[1:]))
    assert not missing, f"unanswered: {missing}; worker log ends:\n{log.read_text()[-3000:]}"
    assert not gaps.exists(), f"offset gaps counted as processed: {gaps.read_text()}"


def test_a_worker_takes_over_the_partitions_of_a_crashed_one_and_answers_every_event(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """Two workers share the input and one is killed mid-stream: once the group has rebalanced, the survivor
    resumes the dead worker's partitions from their commits (their sessions from the changelog), and every
    event is answered."""
    items = known_items(artifact_root, 40)
    users = [f"user{u}" for u in range(12)]
    settings = {"partitions": "4", "producer_max_batch_bytes": "1", "commit_interval_s": "0.1"}
    log = tmp_path / "worker.log"
    for name in ("first", "second"):
        workers.append(Worker(kafka_broker, artifact_root, tmp_path / name, log, **settings))
    stream = [event(n, users[n % 12], items[n % 40]) for n in range(400)]

    async def crash_one_mid_stream() -> None:
        producing = asyncio.create_task(produce(kafka_broker, stream, rate=100))
        await consume(kafka_broker, lambda r: len(answered(r)) >= 150, settle_s=0)
        workers[0].stop(signal.SIGKILL)
        await producing

    asyncio.run(crash_one_mid_stream())
    expected = {f"e{n}" for n in range(400)}
    records = asyncio.run(consume(kafka_broker, lambda r: answered(r) >= expected, settle_s=0))
    missing = sorted(expected - answered(records))
    assert answered(records) == expected, (
        f"unanswered {missing[:10]}... ({len(missing)}); (end, committed) by partition "
        f"{asyncio.run(input_offsets(kafka_broker))}; worker log ends:\n{log.read_text()[-6000:]}"
    )


def test_a_worker_commits_what_it_answered_when_its_partitions_are_revoked(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A rebalance hands partitions over at the offsets their last owner answered, not at its last periodic
    commit: Faust forgot the answered offsets of revoked partitions before committing (faust-streaming
    #502), so the next owner answered again everything since that commit."""
    items = known_items(artifact_root, 20)
    log = tmp_path / "worker.log"
    quiet = {"commit_interval_s": "600"}  # no periodic commit during the test: only a revoke commits
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "first", log, **quiet))
    wait_until_answering(kafka_broker)
    landed = asyncio.run(produce(kafka_broker, [event(n, f"user{n % 8}", items[n % 20]) for n in range(40)]))
    expected = {f"e{n}" for n in range(40)}
    asyncio.run(consume(kafka_broker, lambda r: answered(r) >= expected | {"e-1"}, settle_s=0))
    assert all(committed is None for _, committed in asyncio.run(input_offsets(kafka_broker)).values())

    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "second", log, **quiet))
    answered_up_to = {partition: offset + 1 for partition, offset in sorted(landed)}

    async def wait_for_the_revoke_commit() -> dict[int, tuple[int, int | None]]:
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < deadline:
            offsets = await input_offsets(kafka_broker)
            if all((offsets[p][1] or 0) >= end for p, end in answered_up_to.items()):
                break
            await asyncio.sleep(0.1)
        return offsets

    offsets = asyncio.run(wait_for_the_revoke_commit())
    committed = {partition: offsets[partition][1] for partition in answered_up_to}
    assert committed == answered_up_to, f"worker log ends:\n{log.read_text()[-4000:]}"


def test_an_event_that_cannot_be_answered_is_dead_lettered_and_the_worker_goes_on(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A valid event whose answer raises (a bug, injected by `fault_injection/poison`) goes to
    the DLQ with the error; its batch-mates are answered, and so is what comes after."""
    items = known_items(artifact_root, 10)
    records = [event(n, f"user{n % 3}", items[n % 10]) for n in range(40)]
    records[17] = event(17, "user2", "POISON")
    asyncio.run(produce(kafka_broker, records))
    poison, port = FAULT_INJECTION / "poison", free_port()
    log = tmp_path / "worker.log"
    workers.append(
        Worker(kafka_broker, artifact_root, tmp_path / "state", log, poison, metrics_port=str(port))
    )
    records_out = asyncio.run(
        consume(kafka_broker, lambda r: len(answered(r)) >= 39 and len(r["clickstream.dlq"]) >= 1)
    )

    assert answered(records_out) == {f"e{n}" for n in range(40)} - {"e17"}
    (letter,) = records_out["clickstream.dlq"]
    assert letter["reason"] == "processing_error", letter
    assert letter["detail"] == "RuntimeError: injected failure for item POISON"
    assert base64.b64decode(letter["original_value_base64"]) == records[17][1]
    asyncio.run(produce(kafka_broker, [event(99, "user2", items[3])]))
    later = asyncio.run(consume(kafka_broker, lambda r: "e99" in answered(r), settle_s=0))
    assert "e99" in answered(later) and workers[-1].process.poll() is None
    # Counted once each, although the poison's batch was retried in halves down to the poison alone.
    counts = scrape(port)
    assert counts['bundlecast_dlq_events_total{reason="processing_error"}'] == 1
    assert counts['bundlecast_events_consumed_total{type="view"}'] == 40  # 39 + e99
    assert counts["bundlecast_recommendations_published_total"] == 40
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as response:
        assert b"4 input partition(s)" in response.read()  # the only worker holds all 4


def test_a_worker_whose_agent_fails_exits_and_its_restart_answers_every_event(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """A failure that escapes the agent (handing answers to Kafka failed) must stop the worker, so that it
    restarts from its last commit: Faust alone restarts the agent, which then answered nothing while the
    process, and a TCP liveness check, lived on."""
    items = known_items(artifact_root, 10)
    before = [event(n, f"user{n % 3}", items[n % 10]) for n in range(10)]
    asyncio.run(produce(kafka_broker, before))
    log = tmp_path / "worker.log"
    fault = FAULT_INJECTION / "handover_failure"
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", log, fault))
    asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 10, settle_s=0))
    key, value = event(10, "user1", items[1])
    asyncio.run(produce(kafka_broker, [(key, value.replace(b'"e10"', b'"handover-fails"'))]))
    assert workers[-1].process.wait(timeout=ANSWER_TIMEOUT_S) != 0, log.read_text()[-3000:]

    after = [event(11 + n, f"user{n % 3}", items[n % 10]) for n in range(10)]
    asyncio.run(produce(kafka_broker, after))
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", log))
    expected = {f"e{n}" for n in range(10)} | {"handover-fails"} | {f"e{n}" for n in range(11, 21)}
    records = asyncio.run(consume(kafka_broker, lambda r: answered(r) >= expected, settle_s=0))
    assert answered(records) == expected, log.read_text()[-3000:]


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics samples, by name and labels as exposed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        lines = response.read().decode().splitlines()
    return {
        name: float(value)
        for name, _, value in (line.rpartition(" ") for line in lines)
        if name and not name.startswith("#")
    }


def test_no_input_stops_the_worker_oversized_surrogate_deep_or_keyless(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    """Inputs found to stop workers: a ~900 KB value (its dead letter once carried the whole payload,
    over the Kafka client's 1 MiB request limit: a crash loop); an event id with an escaped lone
    surrogate followed by its user's next session in the same batch (building the answer raised outside
    the per-event isolation: every partition stalled); nesting deeper than the JSON parser's recursion;
    a valid event without a key. Each is dead-lettered with its own reason, small, and every valid event
    around them is answered."""
    items = known_items(artifact_root, 10)
    huge = {"event_id": "big", "user_id": "u-big", "item_id": items[0], "type": "view", "ts": 1_300_000_000}
    surrogate = {
        "event_id": "x\ud800",
        "user_id": "u-s",
        "item_id": items[1],
        "type": "view",
        "ts": 1_300_000_000,
    }
    poison: list[tuple[bytes | None, bytes]] = [
        (b"u-big", json.dumps(huge | {"pad": "x" * 900_000}).encode()),
        (b"u-s", json.dumps(surrogate).encode()),  # json.dumps escapes it: valid JSON, valid UTF-8
        (b"u-s", event(2, "u-s", items[2])[1].replace(b"1300000002", b"1300003602")),  # a new session
        (b"u-d", b"[" * 20_000 + b"]" * 20_000),
        (None, event(3, "u-nokey", items[3])[1]),
    ]
    valid = [event(10 + n, f"user{n % 3}", items[n % 10]) for n in range(30)]
    asyncio.run(produce(kafka_broker, [*valid[:15], *poison, *valid[15:]]))
    log = tmp_path / "worker.log"
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", log))

    expected = {f"e{10 + n}" for n in range(30)} | {"e2"}
    records = asyncio.run(
        consume(kafka_broker, lambda r: answered(r) >= expected and len(r["clickstream.dlq"]) >= 4)
    )
    assert answered(records) == expected, log.read_text()[-3000:]
    letters = {letter["reason"]: letter for letter in records["clickstream.dlq"]}
    assert sorted(letters) == ["missing_key", "not_utf8", "too_deep", "too_large"]
    assert letters["too_large"]["truncated"] and letters["too_large"]["original_value_bytes"] > 900_000
    assert letters["too_large"]["original_value_sha256"] == hashlib.sha256(poison[0][1]).hexdigest()
    assert workers[-1].process.poll() is None
    asyncio.run(produce(kafka_broker, [event(99, "user1", items[4])]))
    assert "e99" in answered(asyncio.run(consume(kafka_broker, lambda r: "e99" in answered(r), settle_s=0)))


def test_idle_users_are_expired_with_a_changelog_tombstone(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    items = known_items(artifact_root, 2)
    ttl = {"state_ttl_s": "1"}  # swept every 0.5 s
    workers.append(Worker(kafka_broker, artifact_root, tmp_path / "state", tmp_path / "worker.log", **ttl))
    asyncio.run(produce(kafka_broker, [event(1, "idle-a", items[0]), event(2, "idle-b", items[1])]))
    asyncio.run(consume(kafka_broker, lambda r: {"e1", "e2"} <= answered(r), settle_s=0))

    async def tombstones() -> set[bytes]:
        consumer = AIOKafkaConsumer(
            "bundlecast-sessions-changelog",
            bootstrap_servers=kafka_broker.bootstrap,
            auto_offset_reset="earliest",
        )
        deleted: set[bytes] = set()
        await consumer.start()
        try:
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            while not {b"idle-a", b"idle-b"} <= deleted and time.monotonic() < deadline:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    deleted |= {m.key for m in messages if m.value is None}
        finally:
            await consumer.stop()
        return deleted

    assert {b"idle-a", b"idle-b"} <= asyncio.run(tombstones())


def test_hot_reload_under_traffic_answers_every_event_once(
    kafka_broker: EmbeddedBroker,
    model_dir: Path,
    workers: list[Worker],
    tmp_path: Path,
    publish_copy: PublishCopy,
) -> None:
    """Traffic flows before, during and after a reload: it goes on until an answer from the new version
    is seen, then 50 events more, however long the box takes to load the new version."""
    old = resolve_version(model_dir).name
    items = known_items(model_dir, 50)
    users = [f"user{u}" for u in range(5)]
    workers.append(Worker(kafka_broker, model_dir, tmp_path / "state", tmp_path / "worker.log"))
    wait_until_answering(kafka_broker)
    new = "99990101T000000Z-reload"

    async def reload_under_traffic() -> tuple[int, ConsumedRecords]:
        def new_version_answered(records: ConsumedRecords) -> bool:
            return any(r["model_version"] == new for r in records["recommendations"])

        reloaded = asyncio.create_task(consume(kafka_broker, new_version_answered, settle_s=0))
        sent, stop_at = 0, None
        while stop_at is None or sent < stop_at:
            chunk = [event(n, users[n % 5], items[n % 50]) for n in range(sent, sent + 10)]
            await produce(kafka_broker, chunk)
            sent += len(chunk)
            if sent == 150:
                publish_copy(model_dir, old, new)
            if stop_at is None and reloaded.done():  # (consume gives up after ANSWER_TIMEOUT_S)
                assert new_version_answered(reloaded.result()), "the new version answered nothing"
                stop_at = sent + 50
            await asyncio.sleep(0.1)
        return sent, await consume(kafka_broker, lambda r: len(r["recommendations"]) >= sent + 1)

    sent, records = asyncio.run(reload_under_traffic())
    answers = [r for r in records["recommendations"] if r["event_id"] != "e-1"]
    assert sorted(r["event_id"] for r in answers) == sorted(f"e{n}" for n in range(sent))  # once each
    assert {r["model_version"] for r in answers} == {old, new}
    for user in users:
        versions = [
            r["model_version"]
            for r in sorted(answers, key=lambda r: int(r["event_id"][1:]))
            if r["user_id"] == user
        ]
        assert versions == sorted(versions, key=lambda v: v == new), f"{user} went back to the old model"


def test_sighup_reloads_a_new_version_when_polling_is_off(
    kafka_broker: EmbeddedBroker,
    model_dir: Path,
    workers: list[Worker],
    tmp_path: Path,
    publish_copy: PublishCopy,
) -> None:
    old = resolve_version(model_dir).name
    items = known_items(model_dir, 10)
    worker = Worker(
        kafka_broker, model_dir, tmp_path / "state", tmp_path / "worker.log", reload_interval_s="0"
    )
    workers.append(worker)
    wait_until_answering(kafka_broker)
    new = "99990101T000000Z-sighup"
    publish_copy(model_dir, old, new)

    def versions_of(event_ids: set[str]) -> set[str]:
        records = asyncio.run(consume(kafka_broker, lambda r: event_ids <= answered(r), settle_s=0))
        return {r["model_version"] for r in records["recommendations"] if r["event_id"] in event_ids}

    asyncio.run(produce(kafka_broker, [event(n, "u", items[n]) for n in range(3)]))
    assert versions_of({"e0", "e1", "e2"}) == {old}  # no polling: LATEST alone changes nothing
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    n, versions = 3, {old}
    while versions != {new} and time.monotonic() < deadline:  # the reload lands between batches
        asyncio.run(produce(kafka_broker, [event(n, "u", items[n % 10])]))
        versions = versions_of({f"e{n}"})
        n += 1
    assert versions == {new}
    assert worker.process.poll() is None  # SIGHUP reloads; it does not stop the worker


class CountingTable(dict):
    """A dict standing in for the Faust table, counting reads and writes."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.reads = self.writes = 0

    def get(self, key: bytes, default: object = None) -> object:
        self.reads += 1
        return super().get(key, default)

    def __setitem__(self, key: bytes, value: object) -> None:
        self.writes += 1
        super().__setitem__(key, value)


class FakeEvent:
    """Only the identity of an event matters to BatchStates (it becomes Faust's current event)."""


def test_batch_states_decode_once_and_write_each_user_back_once_as_json() -> None:
    stored = UserState(cart=("a",), sessions=1)
    table = CountingTable({"ü1".encode(): stored.to_json()})
    states = BatchStates(table, table.pop)
    assert states.get("nobody") is None
    states.event = FakeEvent()
    assert states["ü1"] == stored and states["ü1"] == stored
    assert table.reads == 2  # "nobody" once, "ü1" once

    first, second = UserState(cart=("b",)), UserState(cart=("c",))
    states["ü1"] = first
    states["u2"] = first
    states["ü1"] = second
    assert table.writes == 0  # nothing reaches RocksDB or the changelog before write_back
    states.write_back()
    assert table.writes == 2
    assert table["ü1".encode()] == second.to_json() and table[b"u2"] == first.to_json()


def test_batch_states_refuse_writes_without_an_event() -> None:
    with pytest.raises(RuntimeError):
        BatchStates(CountingTable(), print)["u1"] = UserState()


def test_an_erased_user_is_erased_before_the_batch_writes_and_starts_afresh() -> None:
    """A forget request deletes the user wherever their state is (`erase`), even one not found in the
    event's partition; a later event of theirs in the same batch starts from an empty state."""
    table = CountingTable({b"u1": UserState(cart=("a",)).to_json()})
    erased: list[bytes] = []

    def erase(key: bytes) -> None:
        erased.append(key)
        table.pop(key, None)

    states = BatchStates(table, erase)
    states.event = FakeEvent()
    assert states["u1"].cart == ("a",)
    del states["u1"]
    del states["never-seen"]  # maybe held in another partition: erased all the same
    assert "u1" not in states and states.get("u1") is None
    states["u1"] = UserState(cart=("b",))
    states.write_back()
    assert sorted(erased) == [b"never-seen", b"u1"]
    assert table[b"u1"] == UserState(cart=("b",)).to_json()  # erased first, then written


def test_a_batch_stays_open_as_long_as_the_last_one_took_to_handle_within_idle_and_linger() -> None:
    assert batch_window(linger_s=0.05, idle_s=0.002, last_handling_s=0.012) == 0.012  # moderate load
    assert batch_window(linger_s=0.05, idle_s=0.002, last_handling_s=0.3) == 0.05  # a backlog: capped
    assert batch_window(linger_s=0.05, idle_s=0.002, last_handling_s=0.0005) == 0.002  # never below idle


def test_a_failing_batch_is_bisected_until_only_the_events_that_fail_alone_are_dead_lettered() -> None:
    events = list(range(16))
    poison = {5, 11}
    calls: list[list[int]] = []
    handled: list[int] = []
    failed: list[tuple[int, str]] = []

    async def handle(batch: list[int]) -> None:
        calls.append(batch)
        await asyncio.sleep(0)  # the worker's handling awaits its forwards, off the event loop
        if poison & set(batch):
            raise ValueError(f"cannot answer {sorted(poison & set(batch))}")
        handled.extend(batch)

    asyncio.run(
        handle_isolating_failures(events, handle, lambda event, error: failed.append((event, str(error))))
    )

    assert sorted(handled) == sorted(set(events) - poison)  # every other event handled, once
    assert failed == [(5, "cannot answer [5]"), (11, "cannot answer [11]")]
    assert len(calls) < len(events)  # bisection, not one call per event


def test_a_batch_that_does_not_fail_is_handled_in_one_call() -> None:
    calls: list[list[int]] = []

    async def handle(batch: list[int]) -> None:
        calls.append(batch)

    asyncio.run(
        handle_isolating_failures([1, 2, 3], handle, lambda event, error: pytest.fail(f"{event}: {error}"))
    )
    assert calls == [[1, 2, 3]]


def test_a_thread_that_answers_runs_faiss_on_the_configured_threads() -> None:
    """OpenMP keeps FAISS's thread count per thread: the worker's answering thread sets its own, or each
    search would spin up one OpenMP thread per core beside the event loop."""
    import faiss

    with ThreadPoolExecutor(1, initializer=use_compute_threads, initargs=(1,)) as answering:
        assert answering.submit(faiss.omp_get_max_threads).result() == 1
