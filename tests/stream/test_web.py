"""The query API end to end: two `bundlecast worker` processes on a real broker (Tansu) and real RocksDB,
each asked about every user; malformed requests refused with 4xx."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from stream.broker import EmbeddedBroker, free_port
from stream.schemas import validator
from tests.stream.test_worker import answered, consume, event, known_items, produce, scrape
from tests.stream.workers import Worker

READY_TIMEOUT_S = 120.0


def call(port: int, path: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until_ready(ports: list[int]) -> None:
    """Until each worker holds an input partition (`/readyz`): the assignment that routes queries."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    waiting = set(ports)
    while waiting and time.monotonic() < deadline:
        for port in list(waiting):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5):
                    waiting.discard(port)
            except OSError:
                pass
        time.sleep(0.2)
    assert not waiting, f"workers on ports {waiting} never became ready"


def picks(answer: dict) -> tuple[list[str], list[list[str]]]:
    """What an answer recommends (scores move by ~1e-6 with a batch's padding)."""
    return [item["item_id"] for item in answer["items"]], [bundle["items"] for bundle in answer["bundles"]]


def test_every_worker_answers_about_every_user_from_the_latest_state(
    kafka_broker: EmbeddedBroker, artifact_root: Path, workers: list[Worker], tmp_path: Path
) -> None:
    ports, metrics_ports = [free_port(), free_port()], [free_port(), free_port()]
    for n, (port, metrics_port) in enumerate(zip(ports, metrics_ports, strict=True)):
        workers.append(
            Worker(
                kafka_broker,
                artifact_root,
                tmp_path / f"state{n}",
                tmp_path / f"worker{n}.log",
                web_port=str(port),
                web_host="127.0.0.1",
                metrics_port=str(metrics_port),
                query_idle_s="3600",
            )
        )
    wait_until_ready(ports)
    items = known_items(artifact_root, 24)
    users = [f"user{n}" for n in range(8)]
    records = [
        event(n, users[n % 8], items[n % 24], "add_to_cart" if n % 5 == 0 else "view") for n in range(40)
    ]
    asyncio.run(produce(kafka_broker, records))
    topic = asyncio.run(consume(kafka_broker, lambda r: len(answered(r)) >= 40, settle_s=0))[
        "recommendations"
    ]
    latest = {}
    for message in sorted(topic, key=lambda m: int(m["event_id"][1:])):
        latest[message["user_id"]] = message

    # Not asked anything yet, the workers answer the stream on their event loops; once asked, off them.
    assert [scrape(port)["bundlecast_batches_off_loop_total"] for port in metrics_ports] == [0.0, 0.0]
    check = validator("recommendation-query")
    for user in users:
        status_a, from_a = call(ports[0], f"/recommendations/{user}")
        status_b, from_b = call(ports[1], f"/recommendations/{user}")
        assert status_a == status_b == 200, (from_a, from_b)
        check.validate(from_a)
        assert {**from_a, "generated_at": None} == {**from_b, "generated_at": None}
        assert picks(from_a) == picks(latest[user]) and not from_a["cold_start"]

    # A later event shows at once: its item joins the cart, which anchors the first bundle.
    asyncio.run(produce(kafka_broker, [event(99, "user3", items[20], "add_to_cart")]))
    asyncio.run(consume(kafka_broker, lambda r: "e99" in answered(r), settle_s=0))
    assert max(scrape(port)["bundlecast_batches_off_loop_total"] for port in metrics_ports) >= 1.0
    status, after = call(ports[1], "/recommendations/user3?k=5&bundles=1&exclude=" + items[0])
    assert status == 200 and len(after["items"]) == 5 and len(after["bundles"]) == 1
    assert after["bundles"][0]["anchor"] == items[20]
    assert not {items[20], items[0]} & {item["item_id"] for item in after["items"]}

    status, stranger = call(ports[0], "/recommendations/nobody-yet")
    assert status == 200 and stranger["cold_start"] and stranger["bundles"] == []
    status, anonymous = call(ports[0], "/recommendations?k=4", json.dumps({"items": items[:3]}).encode())
    assert status == 200 and anonymous["user_id"] is None and len(anonymous["items"]) == 4
    check.validate(anonymous)

    for path, body in (
        ("/recommendations/user1?k=0", None),
        ("/recommendations/user1?colour=red", None),
        ("/recommendations/" + "u" * 300, None),
        ("/recommendations", b"{not json"),
        ("/recommendations", b'{"items": [1, 2]}'),
    ):
        status, refusal = call(ports[1], path, body)
        assert status == 400 and set(refusal) == {"error"} and "\n" not in refusal["error"], (path, refusal)
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200
    assert all(worker.process.poll() is None for worker in workers)
