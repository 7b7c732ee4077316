"""How ``harmonixr serve`` runs uvicorn, with uvicorn's documented settings only (no class of
uvicorn's is subclassed: its private internals change between releases), and the process's
memory settings.

What the settings bound:

- ``server_header=False``: no ``server: uvicorn`` header (a version or product tells an
  attacker what to try).
- ``timeout_keep_alive``: an idle keep-alive connection is closed after 5 s.
- ``limit_concurrency``: at most ``CONNECTIONS`` connections and tasks at once; beyond, a new
  request is answered 503 at once. A client trickling its request *headers* holds a connection
  until then: uvicorn has no documented limit on the time headers take, so a public deployment
  sits behind a reverse proxy that has one (``nginx.conf`` beside this module:
  ``client_header_timeout``, and ``client_body_timeout`` for bodies).
- ``h11_max_incomplete_event_size``: request line and headers at most 16 KB.
- ``proxy_headers`` (uvicorn's default, trusted from 127.0.0.1 only): behind that proxy a
  client's address is the one it forwards, so the per-address limits see real clients.

Bodies have their own limits, in ASGI middleware: ``limits.UploadLimit`` (size, time, minimum
rate) and ``limits.Gate`` (places, per address and fairly shared).
"""

from __future__ import annotations

import logging
from typing import Any

CONNECTIONS = 256
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024


def uvicorn_settings() -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` (all documented settings)."""
    return {
        "log_level": "warning",
        "server_header": False,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": CONNECTIONS,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
    }


def log_to_stderr() -> None:
    """The service's log (``harmonixr.serve``: what a library said about a refused file) on
    standard error, where uvicorn writes its own."""
    logger = logging.getLogger("harmonixr.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:  %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# ------------------------------------------------------------------ memory

M_ARENA_MAX = -8  # glibc's mallopt parameter
ARENAS = 2


def bound_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Limit glibc to ``arenas`` malloc arenas for the threads created from now on. Each worker
    thread otherwise gets arenas of its own that keep the memory of its largest request: 20
    concurrent analyses of a 15-minute piece took the server from 259 MB to 1,067 MB, against
    497–529 MB with two arenas set here (2-core VM). Returns whether
    the limit could be set (glibc only)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
