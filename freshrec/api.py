"""The HTTP API (``freshrec serve``): read-only views of the live version, and the event
collection endpoint that feeds the real-time path.

    GET /v1/users/{user_id}/recommendations?n=10[&details=false]
    GET /v1/items/{item_id}/similar?n=10
    GET /v1/popular?category=C&n=10
    GET /v1/queries/{query}/items?n=10
    POST /v1/events     canonical events in (a JSON array or NDJSON), with an API key (freshrec.realtime)
    GET /healthz        200 when the live version is readable, 503 otherwise
    GET /metrics        Prometheus text format
    GET /openapi.json
    GET /docs           Swagger UI, from files served here (freshrec/static), so it works offline
    GET /               the overview page (freshrec/overview.py); /?user=ID previews a list
    GET /data-docs/     the Great Expectations Data Docs under FRESHREC_HOME

Unknown users, items, categories and queries get the overall popular list with
``"source": "fallback"``. Each item carries its ``category`` and ``price`` (null when unknown)
unless ``details=false``. Bad parameters get ``400 {"error": "..."}``; nothing published yet
or the store unreachable gets ``503 {"error": "..."}``. Each request is one store read (two
for a fallback), plus one for the item details: on the event loop for SQLite, in the thread
pool for network stores (see ``create_app``).

The routes live on a module-level router; what they use (the store, the read client, the
metrics, the way reads are run) is per app, on ``app.state``, and reaches them through
FastAPI dependencies."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Literal, NamedTuple

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles

from freshrec import overview
from freshrec.client import MAX_QUERY_LENGTH, RecsClient
from freshrec.serving import MAX_N, NothingPublished, ServingError, ServingStore, StoreUnavailable, open_store
from freshrec.serving.sqlite import SqliteStore
from freshrec.settings import Settings

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SWAGGER_UI = Path(__file__).resolve().parent / "static" / "swagger-ui"
SWAGGER_PATH = "/static/swagger-ui"
DATA_DOCS_PATH = "/data-docs"
NO_CONTROL_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
ID_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u009f][^\\u0000-\\u001f\\u007f-\\u009f]*$"
ECHO_LIMIT = 200  # characters of a request's input an error body may repeat
STORE_UNAVAILABLE = "the serving store is unavailable; try again shortly"
log = logging.getLogger(__name__)


# -- response shapes (documentation only: handlers return encoded JSON directly) -------------

class Item(BaseModel):
    item_id: str
    score: float
    category: str | None = None  # the item's details: null when unknown, absent with details=false
    price: float | None = None
    team: str | None = Field(None, description="interleaved experiment answers only: the variant that contributed this item")


class UserRecs(BaseModel):
    user_id: str
    version: str | None
    source: Literal["personal", "fallback", "list"]
    updated_at: str | None
    experiment: str | None = Field(None, description="the running experiment whose traffic the user is in, else null")
    variant: str | None = Field(None, description="in an experiment: the user's variant, or `interleaved`; else null")
    recommendation_id: str  # new for every answer; logged with what was shown (freshrec.impressions)
    items: list[Item]


class SimilarItems(BaseModel):
    item_id: str
    version: str | None
    source: Literal["similar", "fallback"]
    updated_at: str | None
    recommendation_id: str  # new for every answer; logged with what was shown (freshrec.impressions)
    items: list[Item]


class PopularItems(BaseModel):
    category: str | None
    version: str | None
    source: Literal["popular", "fallback"]
    updated_at: str | None
    recommendation_id: str  # new for every answer; logged with what was shown (freshrec.impressions)
    items: list[Item]


class QueryItems(BaseModel):
    query: str
    version: str | None
    source: Literal["query", "fallback"]
    updated_at: str | None
    recommendation_id: str  # new for every answer; logged with what was shown (freshrec.impressions)
    items: list[Item]


class Error(BaseModel):
    error: str


class Rejected(BaseModel):
    index: int  # the event's position in the request, from 0
    reason: str  # its first reason code (docs/events.md#quarantine)
    message: str  # every reason, as the quarantine records them


class EventsAnswer(BaseModel):
    accepted: int  # events written durably (fsync'd) before this answer
    duplicates: int  # events whose event_id was accepted before, or earlier in this request
    rejected: list[Rejected]


class Health(BaseModel):
    status: str
    live_version: str | None = None
    error: str | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": Error, "description": "bad parameter"},
                                            503: {"model": Error, "description": "nothing published yet, or the store is unreachable"}}


# -- metrics ---------------------------------------------------------------------------------

class Metrics:
    """Request counts, latency histograms per route template and fallbacks, plus what
    :class:`_ScrapeCollector` reads at scrape time, in a registry of this app's own (several
    apps may live in one process)."""

    def __init__(self, store: ServingStore, settings: Settings | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("freshrec_http_requests", "HTTP requests by route template, method and status.",
                                ("route", "method", "status"), registry=self.registry)
        self.latency = Histogram("freshrec_http_request_duration_seconds", "Time to answer a request, by route template.",
                                 ("route",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.fallbacks = Counter("freshrec_fallback", "Answers that fell back to the overall popular list, by endpoint.",
                                 ("endpoint",), registry=self.registry)
        self.events = Counter("freshrec_events", "Events posted to /v1/events, by outcome (accepted, duplicate, rejected).",
                              ("outcome",), registry=self.registry)
        self.registry.register(_ScrapeCollector(store, settings))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def count_events(self, answer: dict[str, Any]) -> None:
        for outcome, n in (("accepted", answer["accepted"]), ("duplicate", answer["duplicates"]),
                           ("rejected", len(answer["rejected"]))):
            if n:
                self.events.labels(outcome).inc(n)

    def fallback(self, endpoint: str) -> None:
        self.fallbacks.labels(endpoint).inc()

    def render(self) -> bytes:
        """The Prometheus text format (reads the store and the ledger: off the event loop for network stores)."""
        return generate_latest(self.registry)


class _ScrapeCollector(Collector):
    """Gauges read when scraped: whether the store answers, its live version, the newest
    micro-batch's freshness from the pipeline's ledger (what `freshrec status` shows), when this
    API runs beside it (same FRESHREC_HOME), and the real-time path's event -> served latency."""

    def __init__(self, store: ServingStore, settings: Settings | None) -> None:
        self.store = store
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            live, up = self.store.live_version(), 1
        except ServingError:
            live, up = None, 0
        yield GaugeMetricFamily("freshrec_serving_up", "1 when the serving store answered the last scrape.", value=up)
        info = GaugeMetricFamily("freshrec_serving_live_version_info", "The live version of the serving store (1 per live version).",
                                 labels=("version",))
        if live is not None:
            info.add_metric((live,), 1)
        yield info
        if self.settings is not None:
            yield from _freshness_metrics(self.settings.state_db)
            yield from _realtime_metrics(self.settings)
            yield from _experiment_metrics(self.settings)


def _realtime_metrics(settings: Settings) -> list[GaugeMetricFamily]:
    from freshrec.realtime import latency_report

    report = latency_report(settings)
    if report is None:
        return []
    family = GaugeMetricFamily("freshrec_realtime_event_to_served_seconds",
                               "Seconds from an event accepted by POST /v1/events to its user's list being served "
                               "(the real-time path), over its last 1,000 events.", labels=("quantile",))
    for quantile, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        family.add_metric((quantile,), report[f"event_to_served_{key}_s"])
    return [family]


def _experiment_metrics(settings: Settings) -> list[GaugeMetricFamily]:
    from freshrec.status import running_experiments

    if not settings.state_db.is_file():
        return []
    running = GaugeMetricFamily("freshrec_experiment_running", "1 per running experiment.", labels=("experiment", "mode"))
    exposed = GaugeMetricFamily("freshrec_experiment_exposed_users",
                                "Users exposed per variant, at the experiment's last report.", labels=("experiment", "variant"))
    for exp in running_experiments(settings):
        running.add_metric((exp["name"], exp["mode"]), 1)
        for variant, users in (exp.get("users") or {}).items():
            exposed.add_metric((exp["name"], variant), users)
        if exp["mode"] == "interleave" and exp.get("exposed_users") is not None:
            exposed.add_metric((exp["name"], "interleaved"), exp["exposed_users"])
    return [running, exposed]


def _freshness_metrics(state_db: Path | None) -> list[GaugeMetricFamily]:
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
        family = GaugeMetricFamily(f"freshrec_microbatch_{name}_seconds",
                                   f"Seconds from {what} to the user's list being served, newest micro-batch.", labels=("quantile",))
        for quantile, key in (("0.5", "p50"), ("0.95", "p95")):
            value = fresh.get(f"{name}_{key}_s")
            if value is not None:
                family.add_metric((quantile,), value)
        out.append(family)
    finished = round(datetime.fromisoformat(fresh["last_microbatch_at"]).timestamp(), 3)
    return out + [
        GaugeMetricFamily("freshrec_microbatch_last_timestamp_seconds", "When the newest micro-batch finished (Unix time).",
                          value=finished),
        GaugeMetricFamily("freshrec_microbatch_rows", "Rows read by the newest micro-batch.", value=int(fresh.get("rows") or 0)),
        GaugeMetricFamily("freshrec_microbatch_users", "Users re-scored by the newest micro-batch.", value=int(fresh.get("users") or 0)),
    ]


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
            route = scope.get("route") or scope.get("endpoint")  # a route, or the static files of a mount
            path = getattr(route, "path_format", None) or getattr(route, "label", None) or "unmatched"
            self.metrics.observe(path, scope.get("method", "GET"), status[0], time.perf_counter() - started)


# -- responses and errors --------------------------------------------------------------------

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
        parts.append(f"{name}: {msg}" + (f" (got {_clip(repr(given))})" if given is not None and not isinstance(given, dict) else ""))
    return "; ".join(parts) or "invalid request"


async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
    return _error(400, _validation_message(exc))


def _clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """Input echoed in an error body: at most ``limit`` characters of it."""
    return text if len(text) <= limit else text[:limit] + "..."


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    response = _error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})  # a 405's Allow
    return response


def _answer_with(status: int) -> Callable[[Request, Exception], Any]:
    async def handler(request: Request, exc: Exception) -> Response:
        return _error(status, _clip(str(exc)))

    return handler


async def _store_unavailable(request: Request, exc: Exception) -> Response:
    # the store's URL (its host) is for the operator's log, not for whoever sent the request
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    return _error(503, STORE_UNAVAILABLE)


#: the most specific class of an exception picks its handler
_EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Any], Any]] = {
    RequestValidationError: _bad_request, StarletteHTTPException: _http_error, NothingPublished: _answer_with(503),
    StoreUnavailable: _store_unavailable, ServingError: _answer_with(400)}


# -- dependencies (async: a sync dependency would cost a thread-pool hop per request) -------

class Reads:
    """Runs a store read on the event loop (``inline``) or in the thread pool."""

    def __init__(self, inline: bool) -> None:
        self.inline = inline

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if self.inline else await run_in_threadpool(fn, *args, **kwargs)


async def _store(request: Request) -> ServingStore:
    return request.app.state.store


async def _client(request: Request) -> RecsClient:
    return request.app.state.client


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _reads(request: Request) -> Reads:
    return request.app.state.reads


StoreDep = Annotated[ServingStore, Depends(_store)]
ClientDep = Annotated[RecsClient, Depends(_client)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ReadsDep = Annotated[Reads, Depends(_reads)]
N = Annotated[int, Query(ge=1, le=MAX_N, description=f"how many items (1..{MAX_N}; lists hold at most FRESHREC_TOP_N)")]
Details = Annotated[bool, Query(description="each item's category and price (null when unknown); false: one store read less")]


class ListQuery(NamedTuple):
    n: int
    details: bool


async def _list_query(n: N = 10, details: Details = True) -> ListQuery:
    """The query parameters of every list endpoint."""
    return ListQuery(n, details)


ListDep = Annotated[ListQuery, Depends(_list_query)]


# -- routes ----------------------------------------------------------------------------------

class _KeyConvertor(PathConvertor):
    """A path segment that may hold anything, slashes and newlines included (``path`` stops at
    a newline, which would turn an id the rules refuse into a 404 instead of their 400)."""

    regex = r"[\s\S]*"


register_url_convertor("key", _KeyConvertor())
router = APIRouter()


def _nonempty(name: str, value: str) -> None:
    if not value.strip(" "):  # trimmed as the clean job trims ids: spaces only
        raise StarletteHTTPException(400, f"{name} must not be empty")


def _answer(result: dict[str, Any], endpoint: str, metrics: Metrics) -> Response:
    if result["source"] == "fallback":
        metrics.fallback(endpoint)
    return _json(result)


@router.get("/v1/users/{user_id:key}/recommendations", response_model=UserRecs, responses=_ERRORS,
            summary="A user's top-N (the overall popular list for an unknown user)")
async def user_recommendations(request: Request, user_id: str, client: ClientDep, reads: ReadsDep, metrics: MetricsDep,
                               q: ListDep) -> Response:
    _nonempty("user_id", user_id)
    result = await reads(client.recs, user_id, q.n, details=q.details)
    if request.app.state.uniform_answers:
        if result["source"] == "fallback":
            metrics.fallback("recommendations")
        # the same shape for a customer and a stranger: no source, no per-user time
        return _json({**result, "source": "list", "updated_at": None})
    return _answer(result, "recommendations", metrics)


@router.get("/v1/items/{item_id:key}/similar", response_model=SimilarItems, responses=_ERRORS,
            summary="Items similar to an item")
async def similar_items(item_id: str, client: ClientDep, reads: ReadsDep, metrics: MetricsDep, q: ListDep) -> Response:
    _nonempty("item_id", item_id)
    return _answer(await reads(client.similar, item_id, q.n, details=q.details), "similar", metrics)


@router.get("/v1/popular", response_model=PopularItems, responses=_ERRORS,
            summary="Popular items, overall or in one category")
async def popular(client: ClientDep, reads: ReadsDep, metrics: MetricsDep, q: ListDep,
                  category: Annotated[str | None, Query(description="omit for the overall list")] = None) -> Response:
    return _answer(await reads(client.popular, category or None, q.n, details=q.details), "popular", metrics)


@router.get("/v1/queries/{query:key}/items", response_model=QueryItems, responses=_ERRORS,
            summary="Items for a frequent search query (matched lower-cased, whitespace collapsed)")
async def query_items(query: str, client: ClientDep, reads: ReadsDep, metrics: MetricsDep, q: ListDep) -> Response:
    _nonempty("query", query)
    return _answer(await reads(client.query_items, query, q.n, details=q.details), "queries", metrics)


# -- the event API ---------------------------------------------------------------------------

_EVENT_EXAMPLE = [
    {"event_id": "e-1001", "ts": "2026-11-20T10:00:00Z", "user_id": "42", "session_id": "s-9", "event_type": "view",
     "item_id": "sku-123", "category": "shoes", "price": 59.9},
    {"event_id": "e-1002", "ts": "2026-11-20T10:01:30Z", "user_id": "42", "session_id": "s-9", "event_type": "purchase",
     "item_id": "sku-123", "quantity": 1, "price": 59.9},
]
# Each event is judged on its own (a bad one is rejected in a 200 answer, beside the accepted
# ones), so the document describes the fields without constraining the items.
_EVENT_SCHEMA = {"description": "a canonical event (docs/events.md): an object with ts, user_id and event_type, item_id for "
                                "item events, query for searches; unknown fields are ignored",
                 "example": _EVENT_EXAMPLE[0],
                 "x-fields": {"event_id": {"type": "string"}, "ts": {"type": "string", "description": "ISO-8601, or epoch milliseconds"},
                                "user_id": {"type": "string"}, "session_id": {"type": "string"},
                                "event_type": {"type": "string", "enum": ["view", "add_to_cart", "remove_from_cart", "purchase", "search"]},
                                "item_id": {"type": "string"}, "query": {"type": "string"}, "category": {"type": "string"},
                                "price": {"type": "number"}, "quantity": {"type": "integer"}}}
_EVENTS_BODY = {"required": True, "content": {
    "application/json": {"schema": {"type": "array", "items": _EVENT_SCHEMA,
                                     "description": "at most 10,000 events and 5 MB (more: 413)"}, "example": _EVENT_EXAMPLE},
    "application/x-ndjson": {"schema": {"description": "one JSON event per line (text)"},
                             "example": "\n".join(json.dumps(e) for e in _EVENT_EXAMPLE)}}}
_EVENTS_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "the body is not a JSON array or NDJSON of events"},
    401: {"model": Error, "description": "a missing or wrong API key (Authorization: Bearer KEY), or no key configured "
                                         "(FRESHREC_API_KEYS) and no --insecure-local"},
    413: {"model": Error, "description": "more than 10,000 events or 5 MB in one request"},
    503: {"model": Error, "description": "this server has no pipeline home to write to, or the disk refused the write"}}


class Ingest:
    """What this server writes under FRESHREC_HOME: the events of POST /v1/events (who may send
    them, their durable log, the real-time scorer) and the impression log of the lists it serves."""

    def __init__(self, settings: Settings, insecure_local: bool = False) -> None:
        from freshrec.impressions import FLUSH_S, ImpressionLog
        from freshrec.realtime import EventLog, Housekeeper, ScorerProcess

        self.keys = [k.encode("utf-8") for k in settings.api_key_list]
        self.insecure_local = insecure_local
        self.log = EventLog(settings)
        self.impressions = ImpressionLog(settings)
        self.scorer = ScorerProcess(settings)
        self.housekeeper = Housekeeper(self.log, self.impressions, self.scorer, FLUSH_S)

    def authorise(self, header: str | None) -> None:
        """Raise 401 unless ``header`` is ``Bearer`` and a configured key (every key is compared,
        in constant time), or no key is configured and writes are open (``--insecure-local``)."""
        import hmac

        if not self.keys:
            if self.insecure_local:
                return
            raise StarletteHTTPException(401, "writes are off: no API key is configured; set FRESHREC_API_KEYS (or run "
                                              "`freshrec serve --insecure-local` on a loopback address)",
                                         headers={"WWW-Authenticate": "Bearer"})
        scheme, _, given = (header or "").partition(" ")
        token = given.strip().encode("utf-8")
        matches = [hmac.compare_digest(token, key) for key in self.keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise StarletteHTTPException(401, "a valid API key is required: Authorization: Bearer KEY",
                                         headers={"WWW-Authenticate": "Bearer"})

    def start(self) -> None:
        if self.log.segments_dir.is_dir():  # recover what a crashed server left; else wait for the first write
            self.log.open()
        if self.impressions.segments.dir.is_dir():
            self.impressions.open()
        self.scorer.start()
        self.housekeeper.start()
        self.impressions.buffered = True  # written every FLUSH_S by the housekeeper, off the request path

    def stop(self) -> None:
        self.housekeeper.stop()  # first: it would start a stopped worker again
        self.scorer.stop()
        self.impressions.buffered = False
        self.log.close()
        self.impressions.close()


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise StarletteHTTPException(413, f"the body is {int(declared):,} bytes; at most {limit:,} are accepted per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise StarletteHTTPException(413, f"the body is over {limit:,} bytes; at most {limit:,} are accepted per request")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/events", response_model=EventsAnswer, responses=_EVENTS_ERRORS, openapi_extra={"requestBody": _EVENTS_BODY},
             summary="Send canonical events (a JSON array or NDJSON); durable when the answer is 200")
async def post_events(request: Request, metrics: MetricsDep) -> Response:
    from freshrec.realtime import MAX_BYTES, BadBody, TooLarge, events_of

    writes: Ingest | None = request.app.state.ingest
    if writes is None:
        raise StarletteHTTPException(503, "this server has no pipeline home to write events to: start it with `freshrec serve`")
    writes.authorise(request.headers.get("authorization"))
    try:
        lines = events_of(await _body(request, MAX_BYTES), request.headers.get("content-type"))
    except TooLarge as exc:
        raise StarletteHTTPException(413, str(exc)) from None
    except BadBody as exc:
        raise StarletteHTTPException(400, _clip(str(exc))) from None
    try:
        verdict, _ = await run_in_threadpool(writes.log.accept, lines)
    except OSError as exc:  # nothing was acknowledged: the sender sends again
        log.error("POST /v1/events: writing the events failed: %s", exc)
        raise StarletteHTTPException(503, "the events could not be written durably; nothing was accepted, send them again") from None
    answer = verdict.answer()
    metrics.count_events(answer)
    return _json(answer)


def _health(store: ServingStore) -> Response:
    try:
        popular = store.get_popular(None, 1)
        live = popular["version"] if popular else store.live_version()
    except StoreUnavailable as exc:
        log.warning("/healthz: %s", exc)
        return _json({"status": "unavailable", "error": STORE_UNAVAILABLE}, 503)
    except ServingError as exc:
        return _json({"status": "unavailable", "error": str(exc)}, 503)
    if popular is None:
        return _json({"status": "unavailable", "live_version": live, "error": "the live version has no overall popular list"}, 503)
    return _json({"status": "ok", "live_version": live})


@router.api_route("/healthz", methods=["GET", "HEAD"], response_model=Health, responses={503: {"model": Health}},
                  summary="200 when the live version is readable")
async def healthz(store: StoreDep, reads: ReadsDep) -> Response:
    return await reads(_health, store)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus text format")
async def prometheus(metrics: MetricsDep, reads: ReadsDep) -> Response:
    return Response(await reads(metrics.render), media_type=CONTENT_TYPE_LATEST)


# -- pages for people ------------------------------------------------------------------------

@router.get("/docs", include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI from this server's own copies of its script and stylesheet (no CDN)."""
    root = request.scope.get("root_path", "").rstrip("/")
    return get_swagger_ui_html(openapi_url=root + request.app.openapi_url, title=f"{request.app.title} - docs",
                               swagger_js_url=f"{root}{SWAGGER_PATH}/swagger-ui-bundle.js",
                               swagger_css_url=f"{root}{SWAGGER_PATH}/swagger-ui.css",
                               swagger_favicon_url=f"{root}{SWAGGER_PATH}/favicon-32x32.png")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def overview_page(request: Request, store: StoreDep, client: ClientDep,
                        user: Annotated[str | None, Query(max_length=512)] = None) -> HTMLResponse:
    """The overview page; several small reads (store, ledger, gate.json, quarantine), so never on the event loop."""
    settings = request.app.state.settings
    data = await run_in_threadpool(overview.collect, store, client, settings, user)
    root = request.scope.get("root_path", "").rstrip("/")
    links = {"API docs": f"{root}/docs", "metrics": f"{root}/metrics", "health": f"{root}/healthz"}
    if settings is not None:
        links["Data Docs"] = f"{root}{DATA_DOCS_PATH}/"
    return HTMLResponse(overview.render(data, links))


class _Files(StaticFiles):
    """Static files under a metrics label of their own, from a folder that may appear later (the
    Data Docs come with the first batch): until it does, every path is a 404."""

    def __init__(self, directory: Path, label: str) -> None:
        super().__init__(directory=directory, html=True, check_dir=False)
        self.label = label

    async def check_config(self) -> None:
        return None


# -- the app ---------------------------------------------------------------------------------

def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("freshrec")
    except PackageNotFoundError:
        return "0"


@asynccontextmanager
async def _lifespan(app: FastAPI):
    ingest: Ingest | None = app.state.ingest
    if ingest is not None:
        ingest.start()
    try:
        yield
    finally:
        if ingest is not None:
            ingest.stop()
        app.state.store.close()


def create_app(settings: Settings | None = None, *, store: ServingStore | None = None,
               inline_reads: bool | None = None, insecure_local: bool = False) -> FastAPI:
    """The read API over ``store`` (default: the store at ``settings.serving``).

    ``inline_reads``: run store reads on the event loop instead of the thread pool. A SQLite
    read is a local sub-millisecond lookup, and the thread-pool hop costs about as much as the
    read, so the default is inline for SQLite and the thread pool for network stores (a stalled
    Redis or PostgreSQL must not freeze /healthz and /metrics). Scale out with more processes."""
    if store is None:
        settings = settings or Settings.load()
        store = open_store(settings.serving)
    app = FastAPI(title="freshrec read API", version=_package_version(), lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="The published recommendation lists of the live version, and the way in for events.")
    app.state.settings = settings
    app.state.store = store
    # the event API and the impression log write under FRESHREC_HOME: an app built on a bare
    # store answers POST /v1/events with 503 and logs no impressions
    app.state.ingest = Ingest(settings, insecure_local) if settings is not None else None
    app.state.client = RecsClient.for_settings(settings or Settings(), store,
                                               app.state.ingest.impressions if app.state.ingest else None)
    if settings is None:  # no state DB: no experiment
        app.state.client.experiments = None
    app.state.uniform_answers = settings is not None and settings.uniform_answers
    app.state.reads = Reads(isinstance(store, SqliteStore) if inline_reads is None else inline_reads)
    app.state.metrics = Metrics(store, settings)
    app.add_middleware(_MetricsMiddleware, metrics=app.state.metrics)
    for exc_class, handler in _EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.include_router(router)
    app.openapi = lambda: _openapi(app, app.state.client.max_id_length)  # type: ignore[method-assign]
    app.mount(SWAGGER_PATH, _Files(SWAGGER_UI, f"{SWAGGER_PATH}/{{path}}"))
    if settings is not None:
        docs = settings.reports_dir / "data_docs"
        app.mount(DATA_DOCS_PATH, _Files(docs, f"{DATA_DOCS_PATH}/{{path}}"))
    return app


def _openapi(app: FastAPI, max_id_length: int) -> dict[str, Any]:
    """FastAPI's document, less the 422 it adds to every operation (this API answers a bad
    parameter with 400, documented, so the document lists only statuses it returns), and with
    the rules of ids stated on their parameters: no control character, at least one character
    other than a space, at most FRESHREC_MAX_ID_LENGTH characters (a query: 1,000)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        limits = {"user_id": max_id_length, "item_id": max_id_length, "category": max_id_length, "query": MAX_QUERY_LENGTH}
        for operations in doc.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
                for param in operation.get("parameters", []):
                    if param["name"] in limits and param["in"] in ("path", "query"):
                        schema = param["schema"]
                        target = next((a for a in schema.get("anyOf", []) if a.get("type") == "string"), schema)
                        target["maxLength"] = limits[param["name"]]
                        target["pattern"] = ID_PATTERN if param["in"] == "path" else NO_CONTROL_PATTERN
        schemas = doc.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = doc
    return app.openapi_schema


def urls(host: str, port: int) -> dict[str, str]:
    """Where ``freshrec serve`` answers (what it prints at start): the overview page, the API,
    its docs, the metrics and the Data Docs. A wildcard bind is shown as this machine."""
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    base = f"http://{shown}:{port}"
    return {"overview": f"{base}/", "API": f"{base}/v1/  (e.g. {base}/v1/popular)", "API docs": f"{base}/docs",
            "metrics": f"{base}/metrics", "Data Docs": f"{base}{DATA_DOCS_PATH}/"}


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(settings: Settings, host: str = "127.0.0.1", port: int = 8000, insecure_local: bool = False) -> None:
    """Run the API with uvicorn until interrupted (``freshrec serve``). ``insecure_local`` lets
    anyone write events without a key, and only on a loopback address."""
    import uvicorn

    from freshrec.errors import UserError

    if insecure_local and host not in LOOPBACK:
        raise UserError(f"--insecure-local accepts writes without a key, so it binds only to a loopback address, not {host!r}; "
                        "set FRESHREC_API_KEYS to write from other machines")
    app = create_app(settings, insecure_local=insecure_local)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


__all__ = ["create_app", "serve", "urls", "router", "Metrics", "MAX_N"]
