"""``harmonixr serve``: the page to drop a MIDI file on, and its JSON endpoints.

```
GET  /                 the page (static files, nothing from the internet)
GET  /api/health       model, its crop, index size, version, whether a corpus map exists
GET  /api/map          the corpus map's points (for the page's 3-D plot)
POST /api/attribute    one file  → [Attribution]        (?k=5)
POST /api/similar      one file  → [Match]              (?k=10)
POST /api/embed        one file  → Embedding
POST /api/timeline     one file  → [Passage]            (?window=&hop=; crop, crop/3)
POST /api/roll         one file  → Roll (piano-roll thumbnail)
POST /api/analyze      one file  → Analysis (all of the above that the page shows, one parse)
POST /api/verify       files a, b → Verdict
GET  /docs             OpenAPI
```

Uploads are multipart form fields (``file``; ``a`` and ``b`` for verify), held in memory
(never spooled to disk). A request for a host the server does not serve gets 400, an upload
from another site's page 403 (:mod:`harmonixr.serve.guard`). A body over the size limit is
refused while it streams in (413), one still arriving after ``upload_timeout`` or slower than
10 KB/s after 5 s too (408); a file that is not MIDI by its header gets 415; a file that cannot
be used gets 422 with its reason; parsing runs in child processes with time and memory limits;
at most ``workers`` uploads are worked on at once and ``queue`` more wait, beyond that 503 with
``Retry-After``. Every refusal is a :class:`~harmonixr.serve.schemas.Problem`. The routes
themselves are in :mod:`harmonixr.serve.routes`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from harmonixr.serve.guard import HostOrigin
from harmonixr.serve.limits import BodyRefused, Gate, UploadLimit, problem
from harmonixr.serve.routes import STATIC, router
from harmonixr.serve.service import Service
from harmonixr.serve.uploads import MB, Limits, UploadError

if TYPE_CHECKING:
    from harmonixr.api import Harmonixr

FORM_SLACK = 64 * 1024  # multipart boundaries and headers around the file's own bytes


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
    allowed_hosts: tuple[str, ...] | list[str] = (),
    parse_memory_mb: float = 384.0,
    score_timeout: float = 40.0,
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
    has the proxy's address unless uvicorn trusts its forwarded headers, as it does from
    127.0.0.1). ``allowed_hosts``: host names served besides localhost (``Host`` header).
    ``parse_memory_mb``: memory a parser process may take over its start (422 beyond);
    ``score_timeout``: seconds a score's conversion may take (``parse_timeout``: MIDI's)."""
    if queue < 0:
        raise ValueError(f"queue must be 0 or more, got {queue}")
    limits = Limits(
        max_bytes=max(1, round(max_upload_mb * MB)),
        parse_timeout=parse_timeout,
        memory=max(1, round(parse_memory_mb * MB)),
        score_timeout=score_timeout,
    )
    if max_seconds is not None:
        limits = replace(limits, max_seconds=max_seconds)
    extra = {} if loader is None else {"loader": loader}
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers))
    hx = _load_model(model, threads)
    service = Service(hx, workers=workers, limits=limits, map_dir=map_dir, **extra)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    _keep_uploads_in_memory(limits.max_bytes * 2 + FORM_SLACK)
    app = FastAPI(
        title="Harmonixr",
        version="1",  # the API's, not the software's: a version tells an attacker what to try
        description="Who wrote this MIDI file, which pieces are like it, same composer?",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their scripts from a CDN: /docs is a page of our own
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service  # what the routes get through routes.get_service

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
    # counts every byte, and the time the body takes to arrive
    app.add_middleware(UploadLimit, limit_for=limit_for, timeout=upload_timeout)
    app.add_middleware(HostOrigin, hosts=allowed_hosts)  # outermost: before anything is read
    _handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _keep_uploads_in_memory(size: int) -> None:
    """Starlette keeps a multipart file part in memory up to ``MultiPartParser.spool_max_size``
    (1 MB by default) and writes the rest to the temporary folder; raised here to the largest
    body the size limit lets in, so no upload touches the disk."""
    from starlette.formparsers import MultiPartParser

    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, size)


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(UploadError)
    async def upload_error(_: Request, exc: UploadError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), exc.status)

    @app.exception_handler(BodyRefused)
    async def refused(_: Request, exc: BodyRefused) -> JSONResponse:
        return JSONResponse(problem(exc.detail, exc.reason), exc.status_code, exc.headers_out())

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
    allowed_hosts: tuple[str, ...] | list[str] = (),
    **options: Any,
) -> None:
    """Run the service with uvicorn until interrupted (``options``: see :func:`create_app`;
    the address it listens on is among the allowed hosts unless it is a wildcard)."""
    import uvicorn

    check_port_free(host, port)  # before the model loads and before "open …" is printed
    from harmonixr.serve.protocol import bound_malloc_arenas, log_to_stderr, uvicorn_settings

    bound_malloc_arenas()  # before the worker threads exist: see its docstring
    hosts = [*allowed_hosts] + ([] if host in ("0.0.0.0", "::", "") else [host])
    app = create_app(model, allowed_hosts=hosts, **options)
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    say(f"Harmonixr: {app.state.service.model_name()}; open http://{shown}:{port}/ (Ctrl-C stops)")
    if host not in ("127.0.0.1", "::1", "localhost"):
        say(
            f"note: listening on {host}, so other machines can reach this page, by the names "
            f"it answers to: {', '.join(sorted(set(hosts) | {'localhost'}))} (--allowed-host "
            "adds one; a public server belongs behind a reverse proxy: serve/nginx.conf)"
        )
    log_to_stderr()
    uvicorn.run(app, host=host, port=port, **uvicorn_settings())
