"""The service's routes on an :class:`APIRouter`; each gets the app's :class:`Service` through
the ``get_service`` dependency (``create_app`` keeps it on ``app.state``)."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from harmonixr.api import MAX_K, MAX_OVERLAP, MAX_WINDOW_S, MIN_WINDOW_S
from harmonixr.results import Attribution, Match, Passage, Verdict
from harmonixr.serve import schemas
from harmonixr.serve.limits import problem
from harmonixr.serve.service import Service
from harmonixr.serve.uploads import clean_name

STATIC = Path(__file__).parent / "static"

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
        (400, "A Host the server does not serve, or a malformed multipart body."),
        (403, "A state-changing request from another site's page (`Origin`)."),
        (409, "The model's index knows no works (`/api/identify` only)."),
        (413, "The upload is larger than the limit."),
        (415, "The file is not MIDI (by its header)."),
        (422, "The file cannot be used; `reason` says why."),
        (503, "Busy: retry after `Retry-After` seconds."),
    )
}

# the query bounds, from the API's own constants (harmonixr/api.py), so that the schema at
# /openapi.json says what Harmonixr.timeline enforces
WINDOW_QUERY = Query(
    None,
    ge=MIN_WINDOW_S,
    le=MAX_WINDOW_S,
    description="Timeline window length, seconds (default: the model's crop, crop_s in "
    "/api/health).",
)
HOP_RULE = (
    f"Seconds between window starts: between window/{MAX_OVERLAP} and window "
    f"(checked together with window; 422 bad_window otherwise)."
)
ONE_FILE = File(
    description="A MIDI file (.mid, .midi, .kar, .rmi) or a score (.musicxml, .mxl, .xml, "
    ".krn, .mei)."
)


async def get_service(request: Request) -> Service:
    """The app's :class:`Service` (async: no worker thread is taken to fetch it)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
router = APIRouter()


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


async def _read(upload: UploadFile) -> tuple[bytes, str]:
    """The upload's bytes (already held to the size limit) and its name, for messages."""
    try:
        return await upload.read(), clean_name(upload.filename)
    finally:
        await upload.close()


async def asked(
    request: Request, service: Service, files: list[tuple[bytes, str]], question: Any
) -> Any:
    """``service.ask`` in a worker thread while the client is watched: once it hangs up,
    the work not yet started (waiting for a worker, the parse, the model) is dropped."""
    gone = threading.Event()

    async def watch() -> None:
        while not gone.is_set():
            if await request.is_disconnected():
                gone.set()
                return
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        return await run_in_threadpool(service.ask, files, question, gone)
    finally:
        watcher.cancel()


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


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)


@router.get("/vendor/plotly.min.js", include_in_schema=False)
async def plotly() -> Response:
    path = plotly_js()
    if path is None:
        return JSONResponse(problem("plotly.js is not installed", "missing"), 404)
    return FileResponse(path, media_type="text/javascript", headers=PAGE_HEADERS)


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(api_page(request.app.openapi()), headers=PAGE_HEADERS)


@router.get("/api/health", response_model=schemas.Health)
async def health(service: ServiceDep) -> dict[str, Any]:
    return service.health()


@router.get("/api/map", response_model=schemas.CorpusMapPoints)
async def corpus_map(service: ServiceDep) -> dict[str, Any]:
    return await run_in_threadpool(service.corpus_map)


@router.post("/api/attribute", response_model=list[Attribution], responses=ERRORS)
async def attribute(
    request: Request,
    service: ServiceDep,
    file: UploadFile = ONE_FILE,
    k: int = Query(5, ge=1, le=MAX_K, description="Named composers to list."),
) -> list[dict[str, Any]]:
    """Who most likely wrote the file: calibrated probabilities, and "unknown"."""
    upload = await _read(file)
    return await asked(request, service, [upload], lambda t: service.attribute(t, k))


@router.post("/api/identify", response_model=schemas.KnownWork, responses=ERRORS)
async def identify(request: Request, service: ServiceDep, file: UploadFile = ONE_FILE) -> Any:
    """Whether the file renders a work of the index (the same music in another edition or
    performance), by its melody; the probability was fitted on validation."""
    upload = await _read(file)
    return await asked(request, service, [upload], service.identify)


@router.post("/api/similar", response_model=list[Match], responses=ERRORS)
async def similar(
    request: Request,
    service: ServiceDep,
    file: UploadFile = ONE_FILE,
    k: int = Query(10, ge=1, le=MAX_K, description="Pieces."),
    per_work: int | None = Query(
        None, ge=1, le=MAX_K, description="At most this many renditions of one piece."
    ),
) -> list[dict[str, Any]]:
    """The indexed pieces nearest to the file, best first."""
    upload = await _read(file)
    return await asked(request, service, [upload], lambda t: service.similar(t, k, per_work))


@router.post("/api/embed", response_model=schemas.Embedding, responses=ERRORS)
async def embed(
    request: Request, service: ServiceDep, file: UploadFile = ONE_FILE
) -> dict[str, Any]:
    """The file's whole-piece embedding."""
    return await asked(request, service, [await _read(file)], service.embed)


@router.post("/api/timeline", response_model=list[Passage], responses=ERRORS)
async def timeline(
    request: Request,
    service: ServiceDep,
    file: UploadFile = ONE_FILE,
    window: float | None = WINDOW_QUERY,
    hop: float | None = Query(
        None,
        gt=0,
        le=MAX_WINDOW_S,
        description=HOP_RULE + " Default: a third of the crop, within those bounds.",
    ),
) -> list[dict[str, Any]]:
    """Composer probabilities window by window (indicative: calibrated on whole pieces)."""
    upload = await _read(file)
    return await asked(request, service, [upload], lambda t: service.timeline(t, window, hop))


@router.post("/api/roll", response_model=schemas.Roll, responses=ERRORS)
async def roll(
    request: Request, service: ServiceDep, file: UploadFile = ONE_FILE
) -> dict[str, Any]:
    """A piano-roll thumbnail of the file as the model sees it."""
    return await asked(request, service, [await _read(file)], service.roll)


@router.post("/api/analyze", response_model=schemas.Analysis, responses=ERRORS)
async def analyze(
    request: Request,
    service: ServiceDep,
    file: UploadFile = ONE_FILE,
    k: int = Query(5, ge=1, le=MAX_K, description="Named composers to list."),
    n: int = Query(10, ge=1, le=MAX_K, description="Nearest pieces."),
    window: float | None = WINDOW_QUERY,
    hop: float | None = Query(
        None, gt=0, le=MAX_WINDOW_S, description=HOP_RULE + " Default: the window."
    ),
) -> dict[str, Any]:
    """What the page shows: composers, nearest pieces, timeline, roll, map position."""
    data, name = await _read(file)
    return await asked(
        request, service, [(data, name)], lambda t: service.analyze(t, name, k, n, window, hop)
    )


@router.post("/api/verify", response_model=Verdict, responses=ERRORS)
async def verify(
    request: Request,
    service: ServiceDep,
    a: UploadFile = File(description="A MIDI file."),
    b: UploadFile = File(description="Another MIDI file."),
) -> dict[str, Any]:
    """Whether the two files share a composer, with the calibrated probability."""
    files = [await _read(a), await _read(b)]
    return await asked(request, service, files, service.verify)
