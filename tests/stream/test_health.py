"""Liveness (input waiting and nothing handled is a dead worker) on /healthz, and readiness (an input
partition held) on /readyz, for Kubernetes and Compose."""

from __future__ import annotations

import urllib.error
import urllib.request
from functools import partial

from stream import metrics
from stream.broker import free_port
from stream.health import Liveness, readiness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_worker_with_input_waiting_and_no_batch_handled_is_dead_after_the_stall_limit() -> None:
    clock = Clock()
    liveness = Liveness(stall_s=30, clock=clock)
    clock.now += 600
    assert liveness.check()[0]  # idle, no input: alive however long
    liveness.input_waiting()
    clock.now += 29
    assert liveness.check()[0]
    liveness.input_waiting()  # more input: the wait still counts from the first
    clock.now += 2
    alive, reason = liveness.check()
    assert not alive and "31 s" in reason
    liveness.progressed()
    assert liveness.check()[0]


def test_healthz_answers_503_with_the_reason_while_the_worker_is_stalled() -> None:
    clock = Clock()
    liveness = Liveness(stall_s=5, clock=clock)
    port = free_port()
    metrics.start_metrics_server(port, addr="127.0.0.1", liveness=liveness.check)
    url = f"http://127.0.0.1:{port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
    liveness.input_waiting()
    clock.now += 6
    try:
        urllib.request.urlopen(url, timeout=5)
        raise AssertionError("a stalled worker answered 200")
    except urllib.error.HTTPError as error:
        assert error.code == 503 and b"no batch handled" in error.read()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert b"bundlecast_events_consumed_total" in response.read()


def test_readyz_answers_503_until_an_input_partition_is_held() -> None:
    held = [0]
    port = free_port()
    metrics.start_metrics_server(port, addr="127.0.0.1", readiness=partial(readiness, lambda: held[0]))
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        urllib.request.urlopen(url, timeout=5)
        raise AssertionError("a worker holding no partition answered ready")
    except urllib.error.HTTPError as error:
        assert error.code == 503 and b"no input partition" in error.read()
    held[0] = 2
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200 and b"2 input partition" in response.read()
