"""uvicorn's HTTP/1.1 protocol with a time limit on a request's headers.

uvicorn limits how long an idle keep-alive connection stays open, but not how long a client may
take to send a request's headers: a client that trickles them a byte at a time keeps its
connection, and a few thousand such clients keep the server's file descriptors. This protocol
closes a connection whose request line and headers have not all arrived ``HEADER_TIMEOUT``
seconds after the connection opened or after its previous response. (The body has its own
limit: ``limits.UploadLimit``.)
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 10.0


def with_header_timeout(seconds: float = HEADER_TIMEOUT) -> type[H11Protocol]:
    """An ``H11Protocol`` class that closes connections whose headers take over ``seconds``."""

    class HeaderTimeout(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None or self.cycle.response_complete:  # no request under way
                self.transport.close()

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            before = self.cycle
            super().handle_events()
            if self.cycle is not None and self.cycle is not before:
                self._disarm()  # a request's headers arrived

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()  # the next request's headers get the same time

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeout


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
