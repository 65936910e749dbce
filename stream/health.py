"""Liveness and readiness, served on the metrics port (`/healthz`, `/readyz`).

Liveness: a worker that has input waiting but handles none of it is dead, whatever its process says.

A TCP check of the metrics port passes for a worker whose agent stopped answering (the process and its
metrics thread live on), so Kubernetes would never restart it. `/healthz` on the metrics port serves this
instead (`stream.metrics.start_metrics_server`).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Liveness:
    """Dead once input has been waiting for `stall_s` with no batch handled in that time.

    Input waits when an event reached the batch buffer, or when a partition's log end is past the next
    offset to answer (`input_waiting`). Handling a batch (`progressed`) resets both. Rebalances and
    table recovery call `progressed` too: restoring the changelog is progress, not a stall.
    """

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self.waiting_since: float | None = None

    def input_waiting(self) -> None:
        if self.waiting_since is None:
            self.waiting_since = self.clock()

    def progressed(self) -> None:
        self.waiting_since = None

    def check(self) -> tuple[bool, str]:
        """(alive, a one-line reason)."""
        if self.waiting_since is None:
            return True, "ok: no input waiting"
        stalled = self.clock() - self.waiting_since
        if stalled > self.stall_s:
            return False, f"input waiting for {stalled:.0f} s and no batch handled (limit {self.stall_s:g} s)"
        return True, f"ok: input waiting for {stalled:.1f} s"


def readiness(partitions: Callable[[], int]) -> tuple[bool, str]:
    """Ready once this worker holds an input partition; the model is loaded before the server starts.

    A worker with no partition (one more than there are partitions, or in the middle of a rebalance)
    answers nothing, so a load balancer or a rollout should not count it as serving.
    """
    held = partitions()
    if held == 0:
        return False, "not ready: no input partition assigned"
    return True, f"ok: model loaded, {held} input partition(s)"
