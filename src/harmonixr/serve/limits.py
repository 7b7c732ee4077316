"""Two ASGI middlewares that keep hostile or heavy traffic from costing the server: a body
size limit enforced while the body streams in (413), and a cap on the uploads being worked on
or waiting (503 with ``Retry-After``), checked before any of the body is read."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
WITH_BODY = ("POST", "PUT", "PATCH")


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body passes its limit; FastAPI answers it (it passes
    HTTP exceptions raised while reading a body through), else :class:`UploadLimit` does."""

    def __init__(self, limit: int, text: str) -> None:
        self.limit = limit
        super().__init__(413, text)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if status == 413:  # the rest of the body will not be read: the connection cannot be reused
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class UploadLimit:
    """Refuses a body larger than the limit of its path (``limit_for(path)`` gives the bytes
    and the sentence to answer with): at once when its declared Content-Length says so, else
    as soon as the bytes received pass the limit (the rest is never read, so a 1 GB upload
    costs the server 10 MB at most)."""

    def __init__(self, app: App, limit_for: Callable[[str], tuple[int, str]]) -> None:
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit, text = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await send_json(send, 413, problem(text, "too_large"))
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, text)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except BodyTooLarge as exc:
            if started:
                raise
            await send_json(send, 413, problem(exc.detail, "too_large"))


class Gate:
    """At most ``capacity`` requests with a body in the house (being worked on, or waiting for
    one of the workers); one more is answered 503 with ``Retry-After`` before its body is
    read. Requests without a body (the page, health, the map) always pass."""

    def __init__(self, app: App, capacity: int, retry_after: int = 5) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.app, self.capacity, self.retry_after = app, capacity, retry_after
        self.active = 0  # only touched on the event loop's thread

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        if self.active >= self.capacity:
            text = (
                f"Busy: {self.active} uploads are being worked on or waiting; "
                f"retry in {self.retry_after} s"
            )
            headers = {"Retry-After": str(self.retry_after)}
            await send_json(send, 503, problem(text, "busy"), headers)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def problem(detail: str, reason: str, file: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "reason": reason, "file": file}
