"""``harmonixr serve``: the page to drop a MIDI file on, and its JSON endpoints.

```
GET  /                 the page (static files, nothing from the internet)
GET  /api/health       model, index size, version, whether a corpus map exists
GET  /api/map          the corpus map's points (for the page's 3-D plot)
POST /api/attribute    one file  → [Attribution]        (?k=5)
POST /api/similar      one file  → [Match]              (?k=10)
POST /api/embed        one file  → Embedding
POST /api/timeline     one file  → [Passage]            (?window=30&hop=10)
POST /api/roll         one file  → Roll (piano-roll thumbnail)
POST /api/analyze      one file  → Analysis (all of the above that the page shows, one parse)
POST /api/verify       files a, b → Verdict
GET  /docs             OpenAPI
```

Uploads are multipart form fields (``file``; ``a`` and ``b`` for verify). A body over the size
limit is refused while it streams in (413), one still arriving after ``upload_timeout`` too
(408); a file that is not MIDI by its header gets 415; a MIDI file that cannot be used gets 422
with its reason; parsing runs in child processes with a time limit; at most ``workers`` uploads
are worked on at once and ``queue`` more wait, beyond that 503 with ``Retry-After``. Every
refusal is a :class:`~harmonixr.serve.schemas.Problem`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from harmonixr.api import MAX_K, MAX_OVERLAP, MAX_WINDOW_S, MIN_WINDOW_S
from harmonixr.serve import schemas
from harmonixr.serve.limits import BodyRefused, Busy, Gate, UploadLimit, problem
from harmonixr.serve.service import MB, Limits, Service, UploadError, clean_name

if TYPE_CHECKING:
    from harmonixr.api import Harmonixr

STATIC = Path(__file__).parent / "static"
FORM_SLACK = 64 * 1024  # multipart boundaries and headers around the file's own bytes
log = logging.getLogger("harmonixr.serve")

PAGE_HEADERS = {
    # the page may load only what this server serves: nothing leaves the machine
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; worker-src 'self' blob:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": schemas.Problem, "description": text}
    for code, text in (
        (408, "The upload took too long to arrive."),
        (413, "The upload is larger than the limit."),
        (415, "The file is not MIDI (by its header)."),
        (422, "The MIDI file cannot be used; `reason` says why."),
        (503, "Busy: retry after `Retry-After` seconds."),
    )
}


def plotly_js() -> Path | None:
    """plotly.js as the installed ``plotly`` package ships it (no CDN)."""
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "package_data" / "plotly.min.js"
        if path.is_file():
            return path
    return None


# the query bounds, from the API's own constants (harmonixr/api.py), so that the schema at
# /openapi.json says what Harmonixr.timeline enforces
WINDOW_QUERY = Query(
    30.0, ge=MIN_WINDOW_S, le=MAX_WINDOW_S, description="Timeline window length, seconds."
)
HOP_RULE = (
    f"Seconds between window starts: between window/{MAX_OVERLAP} and window "
    f"(checked together with window; 422 bad_window otherwise)."
)


def _load_model(
    model: Harmonixr | str | os.PathLike[str] | None, threads: int | None = 1
) -> Harmonixr:
    from harmonixr.api import Harmonixr

    if isinstance(model, Harmonixr):
        return model
    return Harmonixr.load(model, threads=threads)


def create_app(
    model: Harmonixr | str | os.PathLike[str] | None = None,
    *,
    max_upload_mb: float = 10.0,
    workers: int = 2,
    queue: int = 8,
    parse_timeout: float = 30.0,
    max_seconds: float | None = None,
    map_dir: str | os.PathLike[str] | None = None,
    retry_after: int = 5,
    upload_timeout: float = 60.0,
    loader: Callable[[Any], Any] | None = None,
    threads: int | None = None,
    per_client: int = 8,
    max_arriving: int = 64,
) -> FastAPI:
    """The service for ``model``: a :class:`Harmonixr`, a run directory, or None for the
    shipped model. The model needs an index (``harmonixr index build RUN``). A body must
    arrive within ``upload_timeout`` seconds (408). ``loader``
    replaces the function run in the parser processes (tests make it hang or crash).
    ``threads``: torch's CPU threads (``Harmonixr.load``; set for the whole process when a
    path or None is given): by default the cores divided among ``workers`` requests, one on 2
    cores (there, beside a busy process, 1 thread answers in 73 ms, 2 in 103 ms, p90 89
    against 210 ms: ``bench/threads.py``). ``per_client`` uploads may be under way from one
    address and ``max_arriving`` bodies arrive at once (behind a reverse proxy every client
    has the proxy's address unless uvicorn is told to trust its forwarded headers)."""
    if queue < 0:
        raise ValueError(f"queue must be 0 or more, got {queue}")
    limits = Limits(max_bytes=max(1, round(max_upload_mb * MB)), parse_timeout=parse_timeout)
    if max_seconds is not None:
        limits = Limits(limits.max_bytes, max_seconds, parse_timeout)
    extra = {} if loader is None else {"loader": loader}
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    hx = _load_model(model, threads)
    service = Service(hx, workers=workers, limits=limits, map_dir=map_dir, **extra)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    from harmonixr import __version__

    app = FastAPI(
        title="Harmonixr",
        version=__version__,
        description="Who wrote this MIDI file, which pieces are like it, same composer?",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: /docs is a page of our own
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service

    def limit_for(path: str) -> tuple[int, str]:
        files = 2 if path.rstrip("/") == "/api/verify" else 1
        size = f"{limits.max_bytes / MB:g} MB"
        text = f"The upload is larger than the {size} limit" + (" per file" if files > 1 else "")
        return files * limits.max_bytes + FORM_SLACK, text

    app.add_middleware(
        Gate,
        capacity=workers + queue,
        retry_after=retry_after,
        per_client=per_client,
        max_arriving=max_arriving,
    )
    # outermost: counts every byte, and the time the body takes to arrive
    app.add_middleware(UploadLimit, limit_for=limit_for, timeout=upload_timeout)
    _handlers(app)
    _routes(app, service)
    return app


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), exc.status)

    @app.exception_handler(BodyRefused)
    async def refused(_: Request, exc: BodyRefused) -> JSONResponse:
        body = problem(exc.detail, exc.reason)
        if isinstance(exc, Busy):  # the body was read: the connection can serve again
            return JSONResponse(body, 503, {"Retry-After": str(exc.retry_after)})
        return JSONResponse(body, exc.status_code, {"Connection": "close"})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Every other refusal in the documented shape: a multipart body the parser rejects
        (no boundary, invalid data, too many fields or files) is ``bad_multipart``."""
        detail = str(exc.detail)
        if exc.status_code == 400:
            low = detail.lower()
            multipart = "multipart" in low or "boundary" in low or "too many" in low
            reason = "bad_multipart" if multipart else "bad_request"
        else:
            reason = HTTP_REASONS.get(exc.status_code, "http_error")
        return JSONResponse(problem(detail, reason), exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg"))
        return JSONResponse(problem("; ".join(parts) or "invalid request", "invalid_request"), 422)


async def _read(upload: UploadFile) -> tuple[bytes, str]:
    """The upload's bytes (already held to the size limit) and its name, for messages."""
    try:
        return await upload.read(), clean_name(upload.filename)
    finally:
        await upload.close()


def api_page(spec: dict[str, Any]) -> str:
    """The API as a plain page, built from the OpenAPI schema: nothing loads from elsewhere."""
    from html import escape

    rows = []
    for path, methods in sorted(spec.get("paths", {}).items()):
        for method, op in methods.items():
            params = [
                f"{escape(q['name'])} ({escape(str(q.get('schema', {}).get('type', '')))})"
                for q in op.get("parameters", [])
            ]
            body = "multipart upload" if "requestBody" in op else ""
            rows.append(
                f"<tr><td><code>{method.upper()} {escape(path)}</code></td>"
                f"<td>{escape(op.get('summary', ''))}</td>"
                f"<td>{escape(', '.join(params) or body)}</td></tr>"
            )
    info = spec.get("info", {})
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Harmonixr API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:4px 10px;"
        "border-bottom:1px solid #ddd;vertical-align:top}</style></head><body>"
        f"<h1>{escape(info.get('title', 'API'))} {escape(info.get('version', ''))}</h1>"
        f"<p>{escape(info.get('description', ''))}</p>"
        "<p>The full schema: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3; any OpenAPI "
        "viewer reads it).</p><table><tr><th>endpoint</th><th>what</th><th>parameters</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


def _routes(app: FastAPI, service: Service) -> None:
    async def asked(request: Request, files: list[tuple[bytes, str]], question: Any) -> Any:
        """``service.ask`` in a worker thread while the client is watched: once it hangs up,
        the work not yet started (waiting for a worker, the parse, the model) is dropped."""
        gone = threading.Event()

        async def watch() -> None:
            while not gone.is_set():
                if await request.is_disconnected():
                    gone.set()
                    return
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch())
        try:
            return await run_in_threadpool(service.ask, files, question, gone)
        finally:
            watcher.cancel()

    one = File(description="A MIDI file (.mid, .midi, .kar, .rmi).")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    async def plotly() -> Response:
        path = plotly_js()
        if path is None:
            return JSONResponse(problem("plotly.js is not installed", "missing"), 404)
        return FileResponse(path, media_type="text/javascript", headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(api_page(app.openapi()), headers=PAGE_HEADERS)

    @app.get("/api/health", response_model=schemas.Health)
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/api/map", response_model=schemas.CorpusMapPoints)
    async def corpus_map() -> dict[str, Any]:
        return await run_in_threadpool(service.corpus_map)

    @app.post("/api/attribute", response_model=list[schemas.Attribution], responses=ERRORS)
    async def attribute(
        request: Request,
        file: UploadFile = one,
        k: int = Query(5, ge=1, le=MAX_K, description="Named composers to list."),
    ) -> list[dict[str, Any]]:
        """Who most likely wrote the file: calibrated probabilities, and "unknown"."""
        upload = await _read(file)
        got = await asked(request, [upload], lambda t: service.hx.attribute(t, k))
        return [a.to_dict() for a in got]

    @app.post("/api/similar", response_model=list[schemas.Match], responses=ERRORS)
    async def similar(
        request: Request,
        file: UploadFile = one,
        k: int = Query(10, ge=1, le=MAX_K, description="Pieces."),
        per_work: int | None = Query(
            None, ge=1, le=MAX_K, description="At most this many renditions of one piece."
        ),
    ) -> list[dict[str, Any]]:
        """The indexed pieces nearest to the file, best first."""
        upload = await _read(file)
        got = await asked(request, [upload], lambda t: service.hx.similar(t, k, per_work=per_work))
        return [m.to_dict() for m in got]

    @app.post("/api/embed", response_model=schemas.Embedding, responses=ERRORS)
    async def embed(request: Request, file: UploadFile = one) -> dict[str, Any]:
        """The file's whole-piece embedding."""
        z = await asked(request, [await _read(file)], service.embed)
        return {"dim": int(z.shape[0]), "embedding": z.tolist()}

    @app.post("/api/timeline", response_model=list[schemas.Passage], responses=ERRORS)
    async def timeline(
        request: Request,
        file: UploadFile = one,
        window: float = WINDOW_QUERY,
        hop: float = Query(10.0, gt=0, le=MAX_WINDOW_S, description=HOP_RULE),
    ) -> list[dict[str, Any]]:
        """Composer probabilities window by window (indicative: calibrated on whole pieces)."""
        upload = await _read(file)
        return await asked(request, [upload], lambda t: service.timeline(t, window, hop))

    @app.post("/api/roll", response_model=schemas.Roll, responses=ERRORS)
    async def roll(request: Request, file: UploadFile = one) -> dict[str, Any]:
        """A piano-roll thumbnail of the file as the model sees it."""
        return await asked(request, [await _read(file)], service.roll)

    @app.post("/api/analyze", response_model=schemas.Analysis, responses=ERRORS)
    async def analyze(
        request: Request,
        file: UploadFile = one,
        k: int = Query(5, ge=1, le=MAX_K, description="Named composers to list."),
        n: int = Query(10, ge=1, le=MAX_K, description="Nearest pieces."),
        window: float = WINDOW_QUERY,
        hop: float = Query(30.0, gt=0, le=MAX_WINDOW_S, description=HOP_RULE),
    ) -> dict[str, Any]:
        """What the page shows: composers, nearest pieces, timeline, roll, map position."""
        data, name = await _read(file)
        return await asked(
            request, [(data, name)], lambda t: service.analyze(t, name, k, n, window, hop)
        )

    @app.post("/api/verify", response_model=schemas.Verdict, responses=ERRORS)
    async def verify(
        request: Request,
        a: UploadFile = File(description="A MIDI file."),
        b: UploadFile = File(description="Another MIDI file."),
    ) -> dict[str, Any]:
        """Whether the two files share a composer, with the calibrated probability."""
        files = [await _read(a), await _read(b)]
        got = await asked(request, files, service.hx.verify)
        return got.to_dict()


HTTP_REASONS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 408: "too_slow"}


def check_port_free(host: str, port: int) -> None:
    """Refuse, with the way out, a port another program already listens on."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ValueError(
                f"port {port} on {host} is taken ({exc.strerror or exc}): another "
                f"'harmonixr serve' may be running; choose another with --port, e.g. "
                f"--port {port + 1}"
            ) from None


def serve(
    model: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    say: Callable[[str], None] = print,
    **options: Any,
) -> None:
    """Run the service with uvicorn until interrupted (``options``: see :func:`create_app`)."""
    import uvicorn

    check_port_free(host, port)  # before the model loads and before "open …" is printed
    from harmonixr.serve.protocol import bound_malloc_arenas

    bound_malloc_arenas()  # before the worker threads exist: see its docstring
    app = create_app(model, **options)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    say(f"Harmonixr: {app.state.service.model_name()}; open http://{shown}:{port}/ (Ctrl-C stops)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        say(f"note: listening on {host}, so other machines can reach this page")
    from harmonixr.serve.protocol import with_header_timeout

    uvicorn.run(app, host=host, port=port, log_level="warning", http=with_header_timeout())
