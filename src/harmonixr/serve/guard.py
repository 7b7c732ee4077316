"""An ASGI middleware that keeps other sites out of a visitor's local server.

- **Host.** The server answers only to the host names it serves: ``localhost``, ``127.0.0.1``
  and ``[::1]`` by default, more with ``--allowed-host`` (the public name behind a reverse
  proxy). A page on ``evil.example`` that rebinds its DNS name to 127.0.0.1 sends
  ``Host: evil.example`` and gets 400, so it cannot read the answers.
- **Origin.** A state-changing request (POST, PUT, PATCH, DELETE) that a browser sends from
  another site's page says so in ``Origin`` (or ``Sec-Fetch-Site``); it gets 403, so no page
  can make a visitor's browser post uploads to the local server. Clients that are not
  browsers (curl, scripts) send neither header and pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from harmonixr.serve.limits import App, Receive, Scope, Send, problem, send_json

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
CHANGES = ("POST", "PUT", "PATCH", "DELETE")


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an origin's authority, lower case, without its port
    (``[::1]:8000`` → ``::1``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostOrigin:
    """Refuses requests for hosts not in ``hosts`` (400 ``bad_host``) and cross-site
    state-changing requests (403 ``cross_origin``)."""

    def __init__(self, app: App, hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {host_name(h) for h in (*LOCAL_HOSTS, *hosts) if h}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get(b"host", "")
        if host_name(host) not in self.hosts:
            text = "This server does not answer to that host name (see --allowed-host)"
            await send_json(send, 400, problem(text, "bad_host"), {"Connection": "close"})
            return
        if scope.get("method") in CHANGES and self._cross_site(headers, host):
            text = "Uploads are accepted only from this server's own page"
            await send_json(send, 403, problem(text, "cross_origin"), {"Connection": "close"})
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _cross_site(headers: dict[bytes, str], host: str) -> bool:
        if headers.get(b"sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return True
        origin = headers.get(b"origin")
        if origin is None:
            return False  # not sent by a browser's cross-site request
        netloc = urlsplit(origin).netloc.lower() if origin != "null" else ""
        return not netloc or netloc != host.strip().lower()
