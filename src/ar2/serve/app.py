"""``create_app``: the HTTP face of a :class:`~ar2.serve.SearchService` (FastAPI).

Endpoints: ``POST /search``, ``POST /search/batch``, ``GET /health``, ``GET /info``, the page at
``/`` and the OpenAPI schema at ``/openapi.json`` (browsable at ``/docs`` and ``/redoc`` only
with ``docs=True``: they load Swagger UI and ReDoc from a CDN). Request models are built from
the service and its :class:`~ar2.serve.Limits`, so the schema states exactly what is accepted:
the modes this service has, the largest ``k``, ``rerank_k`` and batch. Anything else gets a 4xx
answer whose body names the field and the rule, never a traceback. Every answer is guarded by
:mod:`ar2.serve.security`: the ``Host`` check, the body limit, the security headers.

Example:
    >>> from fastapi.testclient import TestClient
    >>> from ar2.index import BM25Index
    >>> from ar2.pipeline import BM25Retriever
    >>> from ar2.serve import SearchService
    >>> from ar2.types import Doc
    >>> docs = [Doc("d1", "cats eat fish", "Cats"), Doc("d2", "dogs chase balls", "Dogs")]
    >>> app = create_app(SearchService(docs, {"bm25": BM25Retriever(BM25Index.build(docs))}))
    >>> client = TestClient(app, base_url="http://localhost")  # a Host the app answers
    >>> reply = client.post("/search", json={"query": "what do cats eat", "k": 1})
    >>> reply.status_code, reply.json()["hits"][0]["title"]
    (200, 'Cats')
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# run time, and the request models are local to ``create_app``.

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any, Literal, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
)
from starlette.exceptions import HTTPException

from ar2 import __version__
from ar2.errors import Ar2Error, StoreUnavailable
from ar2.pipeline import fetched
from ar2.serve.security import (
    LOOPBACK_HOSTS,
    BodyLimit,
    HostCheck,
    SecurityHeaders,
    security_headers,
)
from ar2.serve.service import Limits, SearchService
from ar2.serve.snippet import snippet
from ar2.types import Doc, Hit, Query

log = logging.getLogger(__name__)


NOT_BLANK_ID = r"^[^\t\n\r]+$"
"""A document id: no tab or line break (ids are written one per line)."""


class HitOut(BaseModel):
    """One result: the document's id, its score, its title and the best-matching stretch."""

    id: str
    score: float
    title: str
    snippet: str


class SearchResponse(BaseModel):
    hits: list[HitOut]
    took_ms: float = Field(description="server-side time of the search, in milliseconds")
    mode: str
    rerank_k: int = Field(description="hits reranked (0: none)")


class Hits(BaseModel):
    hits: list[HitOut]


class BatchResponse(BaseModel):
    results: list[Hits] = Field(description="one entry per query, in request order")
    took_ms: float
    mode: str
    rerank_k: int


class DocumentIn(BaseModel):
    """A document to add or replace (``POST /documents``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=512, pattern=NOT_BLANK_ID)
    title: str = ""
    text: str


class Upsert(BaseModel):
    upserted: int = Field(description="documents added or replaced")
    took_ms: float


class Deleted(BaseModel):
    deleted: str


class Health(BaseModel):
    status: Literal["ok"]
    documents: int
    modes: list[str]


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: str | list[ErrorDetail]


NOT_BLANK = r"[^ \t\n\r\f\v]"
"""A query holds one character other than ASCII whitespace (the same rule in every regex
dialect, so the schema and the validation agree)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a request this service cannot answer"},
    413: {"model": ErrorBody, "description": "request body too large"},
    422: {"model": ErrorBody, "description": "invalid request: the fields and rules broken"},
    503: {"model": ErrorBody, "description": "too many searches queued: retry after a second"},
}
LOC_CHARS = 64  # a field name echoed in an error is cut to this length
STORE_RETRY_S = "5"  # Retry-After when the vector store did not answer


def create_app(
    service: SearchService,
    limits: Limits | None = None,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    docs: bool = False,
) -> FastAPI:
    """A FastAPI app answering searches with ``service`` (already loaded: nothing is loaded
    per request). Run it with uvicorn, or call it in-process with FastAPI's ``TestClient``.

    ``allowed_hosts``: the ``Host`` names answered (any port; ``"*"``: any, ``"*.example.com"``:
    its subdomains); others get 400. ``docs``: serve ``/docs`` and ``/redoc``, which load their
    scripts from a CDN."""
    limits = limits or Limits()
    search_request, batch_request = _request_models(service, limits)
    app = _new_app(service, docs)
    _add_error_handlers(app)
    _add_guards(app, limits, allowed_hosts, docs)

    # The endpoints are ``async``: they await the service's own worker thread (one hop), which
    # also builds titles and snippets, so the event loop stays free for other requests.
    async def run(queries: list[Query], req: Any) -> Any:
        if service.pending >= limits.max_pending:
            raise HTTPException(503, "too many searches queued; retry", {"Retry-After": "1"})

        def hits(run: Any) -> list[list[dict[str, Any]]]:
            return [_hits_out(service, run[q.id], q.text, limits.snippet_chars) for q in queries]

        future = service.submit(queries, req.k, req.mode, req.rerank_k, then=hits)
        return await asyncio.wrap_future(future)

    @app.post("/search", response_model=SearchResponse, responses=_ERRORS)
    async def search(body: search_request) -> dict[str, Any]:  # type: ignore[valid-type]
        """Search one query."""
        start, req = time.perf_counter(), cast(Any, body)
        [results] = await run([Query("0", req.query)], req)
        return _reply(service, req, start, hits=results)

    @app.post("/search/batch", response_model=BatchResponse, responses=_ERRORS)
    async def search_batch(body: batch_request) -> dict[str, Any]:  # type: ignore[valid-type]
        """Search many queries in one call (encoded together: cheaper than one call each)."""
        start, req = time.perf_counter(), cast(Any, body)
        results = await run([Query(str(i), t) for i, t in enumerate(req.queries)], req)
        return _reply(service, req, start, results=[{"hits": h} for h in results])

    _add_status(app, service, limits)
    if service.updatable:
        _add_updates(app, service, limits)
    _add_page(app)
    return app


def _add_updates(app: FastAPI, service: SearchService, limits: Limits) -> None:
    """``POST /documents`` and ``DELETE /documents/{id}`` (``ar2 serve --allow-updates``):
    each runs on the service's worker thread, between searches, so a search sees every
    document of the updates before it and none of those after."""
    batch = Annotated[list[DocumentIn], Field(min_length=1, max_length=limits.max_batch)]
    config = ConfigDict(extra="forbid", strict=True)
    request = create_model("DocumentsRequest", __config__=config, documents=(batch, ...))

    async def queued(future: Any) -> Any:
        if service.pending >= limits.max_pending:
            raise HTTPException(503, "too many requests queued; retry", {"Retry-After": "1"})
        return await asyncio.wrap_future(future)

    @app.post("/documents", response_model=Upsert, responses=_ERRORS)
    async def upsert(body: request) -> dict[str, Any]:  # type: ignore[valid-type]
        """Encode documents and add them to the index, replacing those of the same id."""
        start = time.perf_counter()
        docs = [Doc(d.id, d.text, d.title) for d in cast(Any, body).documents]
        count = await queued(service.upsert(docs))
        return {"upserted": count, "took_ms": round((time.perf_counter() - start) * 1000, 3)}

    @app.delete("/documents/{doc_id}", response_model=Deleted, responses=_ERRORS)
    async def delete(doc_id: str) -> dict[str, Any]:
        """Remove a document from the index."""
        if not await queued(service.delete([doc_id])):
            raise HTTPException(404, f"no document {doc_id[:LOC_CHARS]!r} in the index")
        return {"deleted": doc_id}


def _new_app(service: SearchService, docs: bool) -> FastAPI:
    """The FastAPI app, which closes ``service`` when it shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving %d documents, modes %s", len(service.docs), list(service.modes))
        yield
        service.close()  # the searches in flight finish first
        log.info("shut down")

    return FastAPI(
        title="ar2 search",
        version=__version__,
        description="Retrieve (dense, BM25 or hybrid), then rerank. Built by `ar2`.",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )


def _add_status(app: FastAPI, service: SearchService, limits: Limits) -> None:
    """``GET /health`` and ``GET /info``."""

    @app.get("/health", response_model=Health)
    async def health() -> dict[str, Any]:
        """Liveness: the service is loaded and answering."""
        return {"status": "ok", "documents": len(service.docs), "modes": list(service.modes)}

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """What is served and how it was built: modes, defaults, limits, manifests, versions."""
        return service.info() | {"limits": limits.__dict__}


def _add_guards(app: FastAPI, limits: Limits, allowed_hosts: Sequence[str], docs: bool) -> None:
    """Security headers on every answer, then the Host check, then the body limit."""
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # the last added runs first
    app.add_middleware(HostCheck, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders, docs=docs)


PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
"""The search page: no inline script or style, so its Content-Security-Policy allows only
this service's own files."""


def _add_page(app: FastAPI) -> None:
    """``GET`` routes for :data:`PAGE_FILES`, read once from the package."""
    static = resources.files("ar2.serve").joinpath("static")
    for path, (name, media_type) in PAGE_FILES.items():
        endpoint = _file(static.joinpath(name).read_text("utf-8"), media_type)
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


def _file(content: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    """An endpoint answering ``content`` (it takes no parameters: nothing of the request)."""

    async def endpoint() -> Response:
        return Response(content, media_type=media_type)

    return endpoint


def _request_models(service: SearchService, limits: Limits) -> tuple[Any, Any]:
    """``SearchRequest`` and ``BatchRequest`` with this service's modes and these limits."""
    text = Annotated[
        str,
        StringConstraints(max_length=limits.max_query_chars, pattern=NOT_BLANK),
    ]
    top_rerank = limits.max_rerank_k if service.has_ranker else 0
    common: dict[str, Any] = {
        "k": (_count(1, limits.max_k), Field(10, description="hits to return")),
        "mode": (
            Literal[service.modes],  # type: ignore[valid-type]
            Field(service.default_mode, description="first stage: dense, bm25 or hybrid (RRF)"),
        ),
        "rerank_k": (
            _count(0, top_rerank) | None,
            Field(
                None, description=f"hits to rerank (0: none; default {service.default_rerank_k})"
            ),
        ),
    }
    config = ConfigDict(extra="forbid", strict=True)
    search = create_model(
        "SearchRequest",
        __config__=config,
        query=(text, Field(description="the query text")),
        **common,
    )
    batch = create_model(
        "BatchRequest",
        __config__=config,
        queries=(list[text], Field(min_length=1, max_length=limits.max_batch)),  # type: ignore[valid-type]
        **common,
    )
    return search, batch


def _count(lowest: int, highest: int) -> Any:
    """An integer in ``[lowest, highest]``, given as JSON Schema allows (``5`` or ``5.0``)."""
    return Annotated[int, Field(ge=lowest, le=highest), BeforeValidator(_whole_number)]


def _whole_number(value: Any) -> Any:
    """JSON Schema's integers: ``5`` and ``5.0``, but not ``5.5``, ``"5"`` or ``true``."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int | None):
        raise ValueError("Input should be a whole number")
    return value


def _hits_out(service: SearchService, hits: Sequence[Hit], query: str, chars: int) -> list[dict]:
    out = []
    docs = fetched(service.docs, [h.doc_id for h in hits])  # a store: one call for all
    for hit in hits:
        doc = docs.get(hit.doc_id)
        title, text = (doc.title, snippet(doc.text, query, chars)) if doc else ("", "")
        out.append({"id": hit.doc_id, "score": hit.score, "title": title, "snippet": text})
    return out


def _reply(service: SearchService, req: Any, start: float, **payload: Any) -> dict[str, Any]:
    rerank_k = service.default_rerank_k if req.rerank_k is None else req.rerank_k
    took_ms = (time.perf_counter() - start) * 1000
    return payload | {"took_ms": round(took_ms, 3), "mode": req.mode, "rerank_k": rerank_k}


def _loc(loc: Any) -> list[str | int]:
    """Where the error is; unknown field names are the client's text, so they are cut short."""
    return [part if isinstance(part, int) else str(part)[:LOC_CHARS] for part in loc]


def _message(error: Any) -> str:
    if error.get("type") == "string_pattern_mismatch":
        return "String should hold a character other than whitespace"
    return str(error.get("msg", ""))


def _add_error_handlers(app: FastAPI) -> None:
    """4xx bodies name the field and the rule; nothing echoes input, internals or tracebacks."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"loc": _loc(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(Ar2Error)
    async def refused(request: Request, exc: Ar2Error) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        detail = "the vector store did not answer; retry"
        return JSONResponse({"detail": detail}, 503, headers={"Retry-After": STORE_RETRY_S})

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        # answered outside the middleware that adds the security headers: add them here
        headers = security_headers()
        return JSONResponse({"detail": "internal server error"}, 500, headers=headers)
