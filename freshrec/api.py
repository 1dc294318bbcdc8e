"""The HTTP read API (``freshrec serve``): read-only views of the live version.

    GET /v1/users/{user_id}/recommendations?n=10
    GET /v1/items/{item_id}/similar?n=10
    GET /v1/popular?category=C&n=10
    GET /v1/queries/{query}/items?n=10
    GET /healthz        200 when the live version is readable, 503 otherwise
    GET /metrics        Prometheus text format
    GET /openapi.json

Unknown users, items, categories and queries get the overall popular list with
``"source": "fallback"``. Bad parameters get ``400 {"error": "..."}``; nothing published yet
or the store unreachable gets ``503 {"error": "..."}``. Each request is one store read (two
for a fallback): on the event loop for SQLite, in the thread pool for network stores
(see ``create_app``)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from freshrec.client import RecsClient
from freshrec.serving import ServingError, ServingStore, StoreUnavailable, open_store
from freshrec.serving.base import NothingPublished
from freshrec.settings import Settings

MAX_N = 1000
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# -- response shapes (documentation only: handlers return encoded JSON directly) -------------

class Item(BaseModel):
    item_id: str
    score: float


class UserRecs(BaseModel):
    user_id: str
    version: str | None
    source: Literal["personal", "fallback"]
    updated_at: str | None
    items: list[Item]


class SimilarItems(BaseModel):
    item_id: str
    version: str | None
    source: Literal["similar", "fallback"]
    updated_at: str | None
    items: list[Item]


class PopularItems(BaseModel):
    category: str | None
    version: str | None
    source: Literal["popular", "fallback"]
    updated_at: str | None
    items: list[Item]


class QueryItems(BaseModel):
    query: str
    version: str | None
    source: Literal["query", "fallback"]
    updated_at: str | None
    items: list[Item]


class Error(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    live_version: str | None = None
    error: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": Error, "description": "bad parameter"},
                                            503: {"model": Error, "description": "nothing published yet, or the store is unreachable"}}


# -- metrics ---------------------------------------------------------------------------------

def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Request counts and latency histograms per route template, in Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, list[float]] = {}  # route -> bucket counts..., +Inf count, sum
        self.fallbacks: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.latency.get(route)
            if hist is None:
                hist = self.latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
            for i, bound in enumerate(LATENCY_BUCKETS):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += 1
            hist[-1] += seconds

    def fallback(self, endpoint: str) -> None:
        with self._lock:
            self.fallbacks[endpoint] = self.fallbacks.get(endpoint, 0) + 1

    def render(self, store: ServingStore, state_db: Path | None = None) -> str:
        out = ["# HELP freshrec_http_requests_total HTTP requests by route template, method and status.",
               "# TYPE freshrec_http_requests_total counter"]
        with self._lock:
            requests = dict(self.requests)
            latency = {k: list(v) for k, v in self.latency.items()}
            fallbacks = dict(self.fallbacks)
        for (route, method, status), count in sorted(requests.items()):
            out.append(f'freshrec_http_requests_total{{route="{_label(route)}",method="{method}",status="{status}"}} {count}')
        out += ["# HELP freshrec_http_request_duration_seconds Time to answer a request, by route template.",
                "# TYPE freshrec_http_request_duration_seconds histogram"]
        for route, hist in sorted(latency.items()):
            r = _label(route)
            for bound, count in zip(LATENCY_BUCKETS, hist[:len(LATENCY_BUCKETS)], strict=True):
                out.append(f'freshrec_http_request_duration_seconds_bucket{{route="{r}",le="{bound}"}} {int(count)}')
            out.append(f'freshrec_http_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {int(hist[-2])}')
            out.append(f'freshrec_http_request_duration_seconds_sum{{route="{r}"}} {hist[-1]:.9f}')
            out.append(f'freshrec_http_request_duration_seconds_count{{route="{r}"}} {int(hist[-2])}')
        out += ["# HELP freshrec_fallback_total Answers that fell back to the overall popular list, by endpoint.",
                "# TYPE freshrec_fallback_total counter"]
        for endpoint, count in sorted(fallbacks.items()):
            out.append(f'freshrec_fallback_total{{endpoint="{endpoint}"}} {count}')
        try:
            live, up = store.live_version(), 1
        except ServingError:
            live, up = None, 0
        out += ["# HELP freshrec_serving_up 1 when the serving store answered the last scrape.",
                "# TYPE freshrec_serving_up gauge", f"freshrec_serving_up {up}",
                "# HELP freshrec_serving_live_version_info The live version of the serving store (1 per live version).",
                "# TYPE freshrec_serving_live_version_info gauge"]
        if live is not None:
            out.append(f'freshrec_serving_live_version_info{{version="{_label(live)}"}} 1')
        out += _freshness_metrics(state_db)
        return "\n".join(out) + "\n"


def _freshness_metrics(state_db: Path | None) -> list[str]:
    """The newest micro-batch's freshness from the pipeline's ledger (what `freshrec status`
    shows), when this API runs beside it (same FRESHREC_HOME)."""
    from freshrec.ledger import Ledger
    from freshrec.status import FRESHNESS_WINDOW, freshness

    if state_db is None or not state_db.is_file():
        return []
    try:
        fresh = freshness(Ledger(state_db).recent_microbatches(FRESHNESS_WINDOW))
    except (sqlite3.Error, ValueError):
        return []
    if fresh["last_microbatch_at"] is None:
        return []
    out = []
    for name, what in (("landing_to_served", "a landing file appearing"), ("event_to_served", "a user's newest event")):
        out += [f"# HELP freshrec_microbatch_{name}_seconds Seconds from {what} to the user's list being served, "
                "newest micro-batch.", f"# TYPE freshrec_microbatch_{name}_seconds gauge"]
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            value = fresh.get(f"{name}_{key}_s")
            if value is not None:
                out.append(f'freshrec_microbatch_{name}_seconds{{quantile="{quantile}"}} {value}')
    finished = datetime.fromisoformat(fresh["last_microbatch_at"]).timestamp()
    out += ["# HELP freshrec_microbatch_last_timestamp_seconds When the newest micro-batch finished (Unix time).",
            "# TYPE freshrec_microbatch_last_timestamp_seconds gauge", f"freshrec_microbatch_last_timestamp_seconds {finished:.3f}",
            "# HELP freshrec_microbatch_rows Rows read by the newest micro-batch.",
            "# TYPE freshrec_microbatch_rows gauge", f"freshrec_microbatch_rows {int(fresh.get('rows') or 0)}",
            "# HELP freshrec_microbatch_users Users re-scored by the newest micro-batch.",
            "# TYPE freshrec_microbatch_users gauge", f"freshrec_microbatch_users {int(fresh.get('users') or 0)}"]
    return out


class _MetricsMiddleware:
    """Plain ASGI middleware (cheaper than BaseHTTPMiddleware): times every HTTP request and
    labels it by the matched route template, so user ids never become label values."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"
            self.metrics.observe(path, scope.get("method", "GET"), status[0], time.perf_counter() - started)


# -- the app ---------------------------------------------------------------------------------

def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=json.dumps(obj, separators=(",", ":")), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body")]
        name = ".".join(loc) or "request"
        given = err.get("input")
        msg = str(err.get("msg", "invalid")).lower()
        parts.append(f"{name}: {msg}" + (f" (got {given!r})" if given is not None and not isinstance(given, dict) else ""))
    return "; ".join(parts) or "invalid request"


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("freshrec")
    except PackageNotFoundError:
        return "0"


def create_app(settings: Settings | None = None, *, store: ServingStore | None = None,
               inline_reads: bool | None = None) -> FastAPI:
    """The read API over ``store`` (default: the store at ``settings.serving``).

    ``inline_reads``: run store reads on the event loop instead of the thread pool. A SQLite
    read is a local sub-millisecond lookup, and the thread-pool hop costs about as much as the
    read, so the default is inline for SQLite and the thread pool for network stores (a stalled
    Redis or PostgreSQL must not freeze /healthz and /metrics). Scale out with more processes."""
    if store is None:
        settings = settings or Settings.load()
        store = open_store(settings.serving)
    state_db = settings.state_db if settings is not None else None
    if inline_reads is None:
        inline_reads = type(store).__name__ == "SqliteStore"
    client = RecsClient(store)
    metrics = Metrics()

    async def call(fn: Any, *args: Any) -> Any:
        return fn(*args) if inline_reads else await run_in_threadpool(fn, *args)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        store.close()

    app = FastAPI(title="freshrec read API", version=_package_version(), lifespan=lifespan,
                  description="Read-only access to the live version of the published recommendation lists.")
    app.state.store = store
    app.state.metrics = metrics
    app.add_middleware(_MetricsMiddleware, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        return _error(400, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(NothingPublished)
    async def _nothing(request: Request, exc: NothingPublished) -> Response:
        return _error(503, str(exc))

    @app.exception_handler(StoreUnavailable)
    async def _unavailable(request: Request, exc: StoreUnavailable) -> Response:
        return _error(503, str(exc))

    @app.exception_handler(ServingError)
    async def _serving(request: Request, exc: ServingError) -> Response:
        return _error(400, str(exc))

    n_query = Query(10, ge=1, le=MAX_N, description=f"how many items (1..{MAX_N}; lists hold at most FRESHREC_TOP_N)")

    def _nonempty(name: str, value: str) -> None:
        if not value.strip():
            raise StarletteHTTPException(400, f"{name} must not be empty")

    def _answer(result: dict[str, Any], endpoint: str) -> Response:
        if result["source"] == "fallback":
            metrics.fallback(endpoint)
        return _json(result)

    @app.get("/v1/users/{user_id:path}/recommendations", response_model=UserRecs, responses=_ERRORS,
             summary="A user's top-N (the overall popular list for an unknown user)")
    async def user_recommendations(user_id: str, n: int = n_query) -> Response:
        _nonempty("user_id", user_id)
        return _answer(await call(client.recs, user_id, n), "recommendations")

    @app.get("/v1/items/{item_id:path}/similar", response_model=SimilarItems, responses=_ERRORS,
             summary="Items similar to an item")
    async def similar_items(item_id: str, n: int = n_query) -> Response:
        _nonempty("item_id", item_id)
        return _answer(await call(client.similar, item_id, n), "similar")

    @app.get("/v1/popular", response_model=PopularItems, responses=_ERRORS,
             summary="Popular items, overall or in one category")
    async def popular(category: str | None = Query(None, description="omit for the overall list"), n: int = n_query) -> Response:
        return _answer(await call(client.popular, category or None, n), "popular")

    @app.get("/v1/queries/{query:path}/items", response_model=QueryItems, responses=_ERRORS,
             summary="Items for a frequent search query (matched lower-cased, whitespace collapsed)")
    async def query_items(query: str, n: int = n_query) -> Response:
        _nonempty("query", query)
        return _answer(await call(client.query_items, query, n), "queries")

    def _health() -> Response:
        try:
            popular = store.get_popular(None, 1)
            live = popular["version"] if popular else store.live_version()
        except ServingError as exc:
            return _json({"status": "unavailable", "error": str(exc)}, 503)
        if popular is None:
            return _json({"status": "unavailable", "live_version": live, "error": "the live version has no overall popular list"}, 503)
        return _json({"status": "ok", "live_version": live})

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}},
             summary="200 when the live version is readable")
    async def healthz() -> Response:
        return await call(_health)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
    async def prometheus() -> Response:
        text = await call(metrics.render, store, state_db)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    return app


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API with uvicorn until interrupted (``freshrec serve``)."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


__all__ = ["create_app", "serve", "Metrics", "MAX_N"]
