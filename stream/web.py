"""The query API on every worker, served by Faust's web server (`BUNDLECAST_WEB_PORT`, default 6066).

- `GET /recommendations/{user_id}?k=&bundles=&exclude=`: the user's recommendations from their current
  session state. Any worker can be asked: the request goes to the worker that holds the user's partition
  (Faust's `table_route`, the documented way), which answers from its RocksDB state.
- `POST /recommendations` with `{"items": [...], "cart": [...]}`: an anonymous session given on the spot;
  nothing is stored.
- `/healthz` and `/readyz`: as on the metrics port.

Checking and answering a request is `stream.query`; this module is the HTTP edge. A bad request gets a 400
with `{"error": "one line"}`; an unexpected failure a 500 (logged) and never stops the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import faust
from faust.web import Request, Response, View
from faust.web.exceptions import ServiceUnavailable

from model.answers import Answer, Query, Recommendation
from stream import metrics
from stream.config import StreamSettings
from stream.metrics import Check, QueryRoute
from stream.models import ModelHolder
from stream.query import (
    Ask,
    BadRequest,
    QueryTraffic,
    RecentAnswers,
    answer_json_of,
    check_id,
    error_json,
    parse_parameters,
    parse_session,
    query_for_session,
    query_for_user,
)
from stream.query import answer_json as query_answer_json
from stream.state import UserState

log = logging.getLogger(__name__)

JSON = "application/json"


def register_query_api(
    app: faust.App,
    table: faust.Table,
    state_of: Callable[[bytes], UserState | None],
    models: ModelHolder,
    trending: Callable[[int], Sequence[Recommendation]],
    recent_answers: RecentAnswers,
    traffic: QueryTraffic,
    settings: StreamSettings,
    liveness: Check,
    readiness: Check,
) -> None:
    """Add the query API's pages to `app`. `state_of` finds a user's state among the partitions this worker
    holds; `trending` is the stream's live popularity, first choice for users with no known item;
    `recent_answers` holds the stream's answers that a query about an unchanged session returns;
    `traffic` learns of every query."""

    batcher = QueryBatcher(models, trending, settings.bundle_size)

    async def answer(user_id: str | None, query: Query, k: int, bundles: int) -> bytes:
        version, found = await batcher.answer(query, k, bundles)
        return query_answer_json(user_id, version, found, datetime.now(UTC))

    async def respond(view: View, route: QueryRoute, handle: Callable[[], Awaitable[Response]]) -> Response:
        """Run `handle`, turning refusals and failures into one-line JSON errors, and count the outcome."""
        started = time.perf_counter()
        traffic.note()
        try:
            response = await handle()
        except BadRequest as error:
            response = view.bytes(error_json(str(error)), content_type=JSON, status=400)
        except (ServiceUnavailable, aiohttp.ClientError) as error:
            message = f"the worker holding this user cannot be reached now ({type(error).__name__}); retry"
            response = view.bytes(error_json(message), content_type=JSON, status=503)
        except Exception:
            log.exception("query API: %s request failed", route)
            response = view.bytes(
                error_json("internal error; see the worker's log"), content_type=JSON, status=500
            )
        metrics.QUERY_DURATION.labels(route=route).observe(time.perf_counter() - started)
        metrics.QUERY_REQUESTS.labels(route=route, status=str(response.status)).inc()
        return response

    @app.page("/recommendations/{user_id}")
    class UserRecommendations(View):
        async def get(self, request: Request, user_id: str) -> Response:
            async def handle() -> Response:
                check_id("user_id", user_id, settings)
                ask = parse_parameters(request.query.items(), settings)  # refused here, before forwarding
                return await self.on_owner(request, user_id=user_id, ask=ask)

            return await respond(self, "user", handle)

        @app.table_route(table=table, match_info="user_id")
        async def on_owner(self, request: Request, user_id: str, ask: Ask) -> Response:
            """Runs on the worker holding the user's partition (others forward the request there, where
            `get` checks it again)."""
            state = state_of(user_id.encode("utf-8")) or UserState()
            query = query_for_user(state, ask)
            kept = recent_answers.get(user_id, models.current.version, query, ask.k, ask.bundles)
            if kept is not None:
                metrics.QUERY_ANSWERS_KEPT.inc()
                body = answer_json_of(user_id, kept.model_version, False, kept.content, kept.generated_at)
            else:
                body = await answer(user_id, query, ask.k, ask.bundles)
            return self.bytes(body, content_type=JSON)

    @app.page("/recommendations")
    class SessionRecommendations(View):
        async def post(self, request: Request) -> Response:
            async def handle() -> Response:
                ask = parse_parameters(request.query.items(), settings)
                items, cart = parse_session(await self.read_request_content(request), settings)
                body = await answer(None, query_for_session(items, cart, ask), ask.k, ask.bundles)
                return self.bytes(body, content_type=JSON)

            return await respond(self, "session", handle)

    def health_page(path: str, check: Check) -> None:
        @app.page(path)
        class Health(View):
            async def get(self, request: Request) -> Response:
                healthy, reason = check()
                return self.text(reason + "\n", status=200 if healthy else 503)

    health_page("/healthz", liveness)
    health_page("/readyz", readiness)


class QueryBatcher:
    """Answers the queries waiting at one moment with one call of the answer seam, as the stream answers
    a micro-batch: one forward and one search for all of them instead of one each.

    A query waits only for the answering already under way (no timer): at low rates each is answered
    alone and at once, under load the ones that arrived meanwhile go together.
    """

    def __init__(
        self, models: ModelHolder, trending: Callable[[int], Sequence[Recommendation]], bundle_size: int
    ) -> None:
        self.models = models
        self.trending = trending
        self.bundle_size = bundle_size
        self.waiting: list[tuple[Query, int, int, asyncio.Future[tuple[str, Answer]]]] = []

    async def answer(self, query: Query, k: int, bundles: int) -> tuple[str, Answer]:
        """(model version, answer) for one query."""
        future: asyncio.Future[tuple[str, Answer]] = asyncio.get_running_loop().create_future()
        self.waiting.append((query, k, bundles, future))
        if len(self.waiting) == 1:
            asyncio.get_running_loop().call_soon(self._answer_waiting)
        return await future

    def _answer_waiting(self) -> None:
        waiting, self.waiting = self.waiting, []
        recommender = self.models.current
        by_shape: dict[tuple[int, int], list[tuple[Query, asyncio.Future[tuple[str, Answer]]]]] = {}
        for query, k, bundles, future in waiting:
            by_shape.setdefault((k, bundles), []).append((query, future))
        for (k, bundles), group in by_shape.items():
            try:
                answers = recommender.answer_batch(
                    [query for query, _ in group], k, bundles, self.bundle_size, trending=self.trending
                )
            except Exception as error:  # each caller turns it into a 500
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), found in zip(group, answers, strict=True):
                if not future.done():
                    future.set_result((recommender.version, found))


def web_options(settings: StreamSettings) -> dict[str, Any]:
    """Faust's web settings: the query API on, Faust's own pages off (its table pages would show any
    user's raw state to whoever can reach the port)."""
    options: dict[str, Any] = {
        "web_enabled": bool(settings.web_port),
        "web_port": settings.web_port or 6066,
        "web_bind": settings.web_bind,
        "web_tables_enabled": False,
        "web_router_enabled": False,
        "web_graph_enabled": False,
        "web_stats_enabled": False,
    }
    if settings.web_host:
        options["web_host"] = settings.web_host
    else:
        options["web_host"] = _own_address()
    return options


def _own_address() -> str:
    """This host's address as others reach it (a container's or pod's IP), else its name."""
    import socket

    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError:
        return name
