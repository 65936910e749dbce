"""Prometheus metrics exported by every worker on `BUNDLECAST_METRICS_PORT`.

Plain module-level metric objects on prometheus-client's default registry, so one `start_metrics_server`
call serves them all. Labels are bounded by construction (event types, DLQ reasons, pipeline stages,
topic partitions); user and item ids never become labels. The dashboards and alert rules in `deploy/`
query exactly these names, and `tests/deploy` checks that they stay in sync.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import suppress
from socketserver import ThreadingMixIn
from typing import Any, Literal, get_args
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Gauge, Histogram, Info, disable_created_metrics, make_wsgi_app
from prometheus_client.context_managers import Timer

from model.contract import EVENT_TYPES

# The text format exposes each counter's and histogram's creation time as an extra `_created` gauge series
# that no query here uses; dropping it halves the series count per counter.
disable_created_metrics()

Stage = Literal["state", "model", "faiss", "bundles", "publish"]
STAGES: tuple[Stage, ...] = get_args(Stage)

# Latency target is p99 <= 50 ms, so resolve finely below it and coarsely above.
_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
)
_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BUNDLE_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10)

EVENTS_CONSUMED = Counter(
    "bundlecast_events_consumed_total", "Valid clickstream events consumed, by event type.", ["type"]
)
DLQ_EVENTS = Counter(
    "bundlecast_dlq_events_total",
    "Input messages sent to the dead-letter topic, by reason (each once, also when its batch is retried).",
    ["reason"],
)
RECOMMENDATIONS_PUBLISHED = Counter(
    "bundlecast_recommendations_published_total", "Recommendation messages published to the output topic."
)
BUNDLES_PUBLISHED = Counter(
    "bundlecast_bundles_published_total", "Bundles included in published recommendations."
)
BUNDLE_SIZE = Histogram(
    "bundlecast_bundle_size_items", "Items per published bundle.", buckets=_BUNDLE_SIZE_BUCKETS
)
END_TO_END_LATENCY = Histogram(
    "bundlecast_end_to_end_latency_seconds",
    "Time from an event's arrival at the worker to publication of its recommendation.",
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram("bundlecast_batch_size_events", "Events per micro-batch.", buckets=_BATCH_SIZE_BUCKETS)
# A user with several events in a batch is answered once: the model's work follows users, not events.
BATCH_USERS = Histogram(
    "bundlecast_batch_users", "Users answered per micro-batch (one answer each).", buckets=_BATCH_SIZE_BUCKETS
)
STAGE_DURATION = Histogram(
    "bundlecast_stage_duration_seconds",
    "Time per micro-batch spent in each pipeline stage.",
    ["stage"],
    buckets=_STAGE_BUCKETS,
)
QueryRoute = Literal["user", "session"]  # GET /recommendations/{user_id}, POST /recommendations
QUERY_ROUTES: tuple[QueryRoute, ...] = get_args(QueryRoute)
QUERY_REQUESTS = Counter(
    "bundlecast_query_requests_total",
    "Query API requests answered by this worker, by route (user, session) and HTTP status.",
    ["route", "status"],
)
QUERY_ANSWERS_KEPT = Counter(
    "bundlecast_query_answers_kept_total",
    "User queries answered with the stream's kept answer (session and model unchanged since), no forward.",
)
BATCHES_OFF_LOOP = Counter(
    "bundlecast_batches_off_loop_total",
    "Micro-batches whose answers were computed off the event loop, the query API having been asked within "
    "BUNDLECAST_QUERY_IDLE_S (the others were computed on it).",
)
QUERY_DURATION = Histogram(
    "bundlecast_query_duration_seconds",
    "Query API time from request to response on this worker (forwarding included), by route.",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)
SESSION_STATE_ENTRIES = Gauge(
    "bundlecast_session_state_entries", "User sessions currently held in this worker's state store."
)
USERS_ERASED = Counter(
    "bundlecast_users_erased_total", "Forget requests carried out (state and changelog entries deleted)."
)
SESSION_EXPIRATIONS = Counter(
    "bundlecast_session_expirations_total", "User sessions dropped after the inactivity timeout."
)
COLD_START_ANSWERS = Counter(
    "bundlecast_cold_start_answers_total",
    "Recommendations answered by the popularity fallback (share = this / recommendations published).",
)
CONSUMER_LAG = Gauge(
    "bundlecast_consumer_lag_messages",
    "Messages between the committed offset and the log end, per assigned input partition.",
    ["topic", "partition"],
)
MODEL = Info("bundlecast_model", "Version of the model artifact currently answering.")
INDEX_ITEMS = Gauge("bundlecast_index_items", "Items in the FAISS index currently answering.")
MODEL_RELOADS = Counter("bundlecast_model_reloads_total", "Successful model and index hot reloads.")
MODEL_RELOAD_FAILURES = Counter(
    "bundlecast_model_reload_failures_total",
    "Reload polls that found a published version that cannot be loaded; the previous model keeps answering.",
)

# Pre-create the known label values so their series exist at 0 before the first event: rate() and absent()
# in dashboards and alerts then behave from the first scrape instead of after the first increment.
for _event_type in EVENT_TYPES:
    EVENTS_CONSUMED.labels(type=_event_type)
for _stage in STAGES:
    STAGE_DURATION.labels(stage=_stage)
for _route in QUERY_ROUTES:
    QUERY_DURATION.labels(route=_route)
    QUERY_REQUESTS.labels(route=_route, status="200")


def observe_stage(stage: Stage) -> Timer:
    """Context manager timing one pipeline stage of a micro-batch: `with observe_stage("model"): ...`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    return STAGE_DURATION.labels(stage=stage).time()


def set_model_version(version: str, index_items: int) -> None:
    """Publish which artifact answers now; called once at start-up and after every successful reload."""
    MODEL.info({"version": version})
    INDEX_ITEMS.set(index_items)


def forget_partitions(topic: str, partitions: Iterable[int]) -> None:
    """Drop the lag series of partitions this worker no longer owns (after a rebalance), so that a stale
    value does not linger on the dashboard beside the new owner's."""
    for partition in partitions:
        with suppress(KeyError):
            CONSUMER_LAG.remove(topic, str(partition))


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # Prometheus scrapes every few seconds
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


Check = Callable[[], tuple[bool, str]]  # (healthy, a one-line reason)


def start_metrics_server(
    port: int, addr: str = "0.0.0.0", liveness: Check | None = None, readiness: Check | None = None
) -> None:
    """Serve `/metrics` for Prometheus, and `/healthz` (liveness) and `/readyz` (readiness) for Kubernetes
    and Compose (200 or 503, with one line why), from a daemon thread beside the worker's event loop."""
    exposition = make_wsgi_app()
    checks = {"/healthz": liveness, "/readyz": readiness}

    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO")
        if path in checks:
            check = checks[path]
            healthy, reason = check() if check is not None else (True, "ok")
            start_response(
                "200 OK" if healthy else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [reason.encode() + b"\n"]
        return exposition(environ, start_response)

    server = make_server(addr, port, route, _ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
