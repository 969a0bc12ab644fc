"""The HTTP service (FastAPI): ``POST /v1/rank``, ``GET /v1/model``, ``GET /healthz``,
``GET /metrics``, and the full-catalogue routes ``POST /v1/recommend`` and ``POST /v1/search``
(retrieve, then rerank: the block at the end of this module).

Importing this module needs the ``[serve]`` extra (fastapi, prometheus_client); the rest of
gensr does not. :func:`create_app` wraps a :class:`~gensr.serve.ranker.Ranker`: requests are
validated (schema first, then the catalogue: unknown ids, task, limits), queued in a bounded
queue and scored in micro-batches (:class:`~gensr.serve.batcher.MicroBatcher`). At most
``max_concurrency`` requests are inside the app at once; the excess is answered 503 with
``Retry-After`` at once. Every error answers with the same JSON body, ``{"error": code,
"message": text, "details": [{"field", "message"}]}``.
"""


import hmac
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from gensr.serve.batcher import MicroBatcher
from gensr.serve.errors import RequestError
from gensr.serve.metrics import ConnectionStats, Metrics
from gensr.serve.ranker import Ranker, RankRequest

try:
    from fastapi import Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as err:  # pragma: no cover - depends on the environment
    from gensr.serve.errors import ServeDependencyError

    raise ServeDependencyError(
        f"the HTTP service needs the [serve] extra ({err.name} is missing): "
        "pip install 'gensr[serve]'") from err

from gensr.serve.bodies import field_name, full_bodies, rank_body, wording  # noqa: E402

log = logging.getLogger("gensr.serve")
API_KEY_HEADER = "X-API-Key"
JSON_TYPES = ("application/json",)
CLOSE = {"Connection": "close"}  # on answers sent before the body was read


@dataclass(frozen=True)
class ServeSettings:
    """How the service batches, bounds and guards requests."""

    api_key: str | None = None
    max_batch: int = 32  # requests scored together
    window_ms: float = 2.0  # how long the first request of a batch waits for company
    max_queue: int = 256  # requests waiting beyond the one batch being scored; then 503
    max_body_bytes: int = 1 << 20  # 413 beyond
    # requests inside the app at once (None: max_queue + max_batch + 64); then 503
    max_concurrency: int | None = None
    # connection guards (gensr.serve.protocol; enforced by `gensr serve`, not by the app)
    max_connections: int = 1000  # open connections; the one idle longest makes room
    idle_timeout_s: float = 5.0  # an idle connection is closed
    read_timeout_s: float = 10.0  # a request's head and body must arrive in this time (408)

    @property
    def concurrency(self) -> int:
        """The limit on requests inside the app."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return self.max_queue + self.max_batch + 64


# --- schemas -------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    field: str | None = Field(None, description="The request field at fault, if one is.")
    message: str


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer of the service."""

    error: str = Field(description="A short code: invalid_json, invalid_request, "
                       "unknown_item, task_not_served, unauthorized, payload_too_large, "
                       "unsupported_media_type, overloaded, not_found, "
                       "method_not_allowed, request_timeout, internal_error.")
    message: str = Field(description="What was wrong, in one line.")
    details: list[ErrorDetail] = Field(default_factory=list)


class ScoredItemOut(BaseModel):
    item: str = Field(description="Original item id.")
    score: float = Field(description="The model's score: higher ranks first.")


class RankResponse(BaseModel):
    model: str
    task: Literal["rec", "src"]
    n_candidates: int
    ranking: list[ScoredItemOut] = Field(description="Candidates best first (top_k of them "
                                         "if given); ties keep the request's order.")


class HealthResponse(BaseModel):
    status: Literal["ok"]
    model: str
    queued: int
    requests: int
    batches: int
    refused: int


# --- the app -------------------------------------------------------------------------------
def _error(status: int, code: str, message: str, details: list[dict] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": code, "message": message, "details": details or []}
    return JSONResponse(body, status_code=status, headers=headers)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 413: "payload_too_large",
                 415: "unsupported_media_type"}


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (e.get("ctx") or {}).get("error", "not JSON")
        return _error(400, "invalid_json", f"the request body is not valid JSON ({reason})")
    details = []
    for e in errors:
        where = field_name(e.get("loc", ()))
        details.append({"field": where, "message": wording(e, where)})
    first = details[0]
    more = f" (+{len(details) - 1} more)" if len(details) > 1 else ""
    text = first["message"] if first["field"] == "body" else (
        f"{first['field']}{' ' if first['message'].startswith('is ') else ': '}"
        f"{first['message']}")
    return _error(422, "invalid_request", text + more, details)


class BodyGuard:
    """ASGI middleware: JSON content type on POST (415) and a body size cap (413), checked
    before anything is parsed; the body is read at most to the cap and then replayed."""

    def __init__(self, app: Callable, max_bytes: int, paths: tuple[str, ...] = ("/v1/rank",)
                 ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.paths = paths

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope.get("path") not in self.paths):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in JSON_TYPES and not ctype.endswith("+json"):
            shown = ctype or "none"
            await _error(415, "unsupported_media_type",
                         f"Content-Type must be application/json (got {shown}); with curl "
                         "add -H 'Content-Type: application/json'",
                         headers=CLOSE)(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _error(413, "payload_too_large", f"the request body exceeds {self.max_bytes} "
                     "bytes", headers=CLOSE)(scope, receive, send)


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` requests inside the app at once; the excess gets
    503 with ``Retry-After`` at once. Only requests count, not connections (idle ones are
    the protocol's business); ``/healthz`` and ``/metrics`` are exempt (they cost nothing)."""

    def __init__(self, app: Callable, limit: int, stats: ConnectionStats,
                 exempt: tuple[str, ...] = ("/healthz", "/metrics")) -> None:
        self.app = app
        self.limit = limit
        self.stats = stats
        self.exempt = exempt

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        if self.stats.in_flight >= self.limit:
            self.stats.refused_in_flight += 1
            await _error(503, "overloaded",
                         f"the service is at its limit of {self.limit} requests in progress; "
                         "retry shortly", headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.stats.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.stats.in_flight -= 1


def create_app(ranker: Ranker, settings: ServeSettings | None = None,
               connections: ConnectionStats | None = None) -> FastAPI:
    """The FastAPI app serving ``ranker`` (start it with uvicorn, or :func:`serve`).

    ``connections``: the stats the connection guards keep (:mod:`gensr.serve.protocol`), for
    ``/metrics``; a fresh one when the app runs without them."""
    settings = settings or ServeSettings()
    connections = connections if connections is not None else ConnectionStats()
    batcher = MicroBatcher(ranker.rank_prepared, max_batch=settings.max_batch,
                           window_ms=settings.window_ms, max_queue=settings.max_queue)
    RankBody = rank_body(ranker)  # noqa: N806 - a class

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        log.info("gensr: serving %s (%s) with micro-batches of <= %d", ranker.model_name,
                 ranker.data.fingerprint, settings.max_batch)
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="gensr ranking service",
        version=_version(),
        description=(f"Ranks candidate items with the {ranker.model_name} model for a "
                     "user's history, for search (with a query) or recommendation. Item ids "
                     "are the data's original ids."),
        lifespan=lifespan,
    )
    app.state.ranker = ranker
    app.state.batcher = batcher
    metrics = Metrics(connections, batcher=batcher, model=ranker.model_name,
                      fingerprint=ranker.data.fingerprint)
    app.state.metrics = metrics
    paths: set[str] = set()
    app.add_middleware(BodyGuard, max_bytes=settings.max_body_bytes,
                       paths=("/v1/rank", *FULL_PATHS))
    app.add_middleware(ConcurrencyLimit, limit=settings.concurrency, stats=connections)
    app.add_middleware(metrics.middleware, routes=lambda: paths)  # outermost: counts all

    header = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                          description="The service's API key (--api-key / GENSR_API_KEY).")

    async def check_key(key: str | None = Depends(header)) -> None:
        expected = settings.api_key
        if expected and not (key and hmac.compare_digest(key.encode(), expected.encode())):
            raise StarletteHTTPException(
                401, "missing or wrong API key: send it in the X-API-Key header")

    guard = [Depends(check_key)] if settings.api_key else []
    bearer = HTTPBearer(auto_error=False, description="The API key as a bearer token "
                        "(what Prometheus's `authorization` scrape setting sends).")

    async def check_scraper(key: str | None = Depends(header),
                            token: HTTPAuthorizationCredentials | None = Depends(bearer)
                            ) -> None:
        if token is not None and key is None:
            key = token.credentials
        await check_key(key)

    scrape_guard = [Depends(check_scraper)] if settings.api_key else []
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": text} for status, text in {
            400: "The body is not valid JSON.",
            401: "Missing or wrong API key (when the service has one).",
            413: "The body is too large.",
            415: "The body is not application/json.",
            422: "The request breaks the schema, names unknown items, asks for a task the "
                 "model does not serve, or exceeds a limit.",
            503: "The service is at capacity (queue full) or stopping: retry later.",
        }.items()}

    @app.exception_handler(RequestValidationError)
    async def _on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(RequestError)
    async def _on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        details = [{"field": exc.field, "message": exc.message}]
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        return _error(exc.status, exc.code, exc.message, details, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = str(exc.detail)
        if exc.status_code == 400 and request.url.path in ("/v1/rank", *FULL_PATHS):
            # FastAPI's own 400: a body it could not decode (e.g. not UTF-8)
            code, message = "invalid_json", f"the request body is not valid JSON ({message})"
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers.setdefault("WWW-Authenticate", API_KEY_HEADER)
        return _error(exc.status_code, code, message, headers=headers or None)

    @app.exception_handler(Exception)
    async def _on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("gensr: request failed")
        return _error(500, "internal_error", "the model failed on this request (the "
                      "server log has the details)")

    @app.post("/v1/rank", response_model=RankResponse, dependencies=guard,
              responses=errors, summary="Rank candidates for a user (search or rec)")
    async def rank(body: RankBody) -> Any:  # type: ignore[valid-type]
        request = RankRequest(
            history=[(h.item, h.behaviour, h.query) for h in body.history],
            candidates=body.candidates, query=body.query, top_k=body.top_k, user=body.user)
        prepared = ranker.prepare(request)  # 422 here: nothing is queued
        result = await batcher.submit(prepared)
        if isinstance(result, Exception):  # pragma: no cover - the batcher raises these
            raise result
        return {"model": ranker.model_name, **result.to_dict()}

    @app.get("/v1/model", dependencies=guard,
             responses={401: errors[401]}, summary="The model card")
    async def model_card() -> dict[str, Any]:
        card = ranker.model_card()
        card["serving"] = {k: v for k, v in asdict(settings).items() if k != "api_key"}
        card["serving"]["api_key_required"] = bool(settings.api_key)
        card["serving"]["max_concurrency"] = settings.concurrency
        return card

    @app.get("/healthz", response_model=HealthResponse,
             responses={503: {"model": ErrorResponse, "description": "Stopping."}},
             summary="Liveness: 200 while the service accepts requests")
    async def healthz() -> Any:
        if not batcher.running:
            return _error(503, "overloaded", "the service is stopping")
        s = batcher.stats
        return {"status": "ok", "model": ranker.model_name, "queued": batcher.queued,
                "requests": s.requests, "batches": s.batches, "refused": s.refused}

    add_full_catalogue_routes(app, ranker, batcher, guard, errors)

    @app.get("/metrics", dependencies=scrape_guard, response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text format."}, 401: errors[401]},
             summary="Prometheus metrics: requests, latency, connections, batches")
    async def prometheus_metrics(request: Request) -> Response:
        body, content_type = metrics.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    paths.update(getattr(r, "path", "") for r in app.routes)
    return app


def _version() -> str:
    from gensr import __version__

    return __version__



# --- full-catalogue routes: POST /v1/recommend, POST /v1/search --------------------------
# Retrieve the top rerank_n items of the whole catalogue (gensr.retrieve), rerank them with
# the model, answer the best top_k with the time each stage took (gensr.serve.full). The
# requests go through the same validation errors, micro-batcher and API key as /v1/rank.
FULL_PATHS = ("/v1/recommend", "/v1/search")


class FullTimings(BaseModel):
    retrieve: float = Field(description="Milliseconds retrieving, for the micro-batch the "
                            "request was scored in.")
    rerank: float = Field(description="Milliseconds reranking (model scores), same batch.")
    total: float = Field(description="Milliseconds from the request's arrival to its answer "
                         "(validation, queueing, both stages).")
    batch: int = Field(description="Requests scored together with this one (itself included).")


class FullResponse(BaseModel):
    model: str
    task: Literal["rec", "src"]
    retriever: str = Field(description="The retriever that proposed the candidates.")
    n_candidates: int = Field(description="Items retrieved and reranked (<= rerank_n).")
    ranking: list[ScoredItemOut] = Field(description="The best top_k of them, best first; "
                                         "ties keep the retrieval order.")
    timings_ms: FullTimings


def add_full_catalogue_routes(app: FastAPI, ranker: Ranker, batcher: MicroBatcher,
                              guard: list, errors: dict[int | str, dict[str, Any]]) -> None:
    """Add ``POST /v1/recommend`` and ``POST /v1/search`` to ``app`` (builds the ranker's
    retrievers now, so that a bad spec fails at start-up, not on the first request)."""
    import time

    from gensr.serve.full import FullRequest

    RecommendBody, SearchBody = full_bodies(ranker)  # noqa: N806 - classes

    async def answer(body: Any, query: str | None, started: float) -> dict[str, Any]:
        request = FullRequest(
            history=[(h.item, h.behaviour, h.query) for h in body.history], user=body.user,
            query=query, top_k=body.top_k, rerank_n=body.rerank_n, retriever=body.retriever,
            keep_consumed=body.keep_consumed)
        prepared = ranker.prepare_full(request)  # 422 here: nothing is queued
        result = await batcher.submit(prepared)
        if isinstance(result, Exception):  # pragma: no cover - the batcher raises these
            raise result
        out = {"model": ranker.model_name, **result.to_dict()}
        out["timings_ms"]["total"] = round((time.perf_counter() - started) * 1000, 3)
        return out

    @app.post("/v1/recommend", response_model=FullResponse, dependencies=guard,
              responses=errors, summary="Recommend from the whole catalogue (retrieve, "
              "rerank)")
    async def recommend(body: RecommendBody) -> Any:  # type: ignore[valid-type]
        return await answer(body, None, time.perf_counter())

    @app.post("/v1/search", response_model=FullResponse, dependencies=guard,
              responses=errors, summary="Search the whole catalogue (retrieve, rerank)")
    async def search(body: SearchBody) -> Any:  # type: ignore[valid-type]
        return await answer(body, body.query, time.perf_counter())
