"""Two ASGI middlewares that keep hostile or heavy traffic from costing the server: a body
size limit enforced while the body streams in (413) and a time limit for it to arrive (408, so
that a client trickling bytes cannot hold a place for ever), and a cap on the uploads being
worked on or waiting (503 with ``Retry-After``) that an upload joins only once its body has
arrived, with caps on bodies arriving per address and overall."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
WITH_BODY = ("POST", "PUT", "PATCH")


class BodyRefused(HTTPException):
    """Raised from ``receive`` once the body passes its size or time limit; FastAPI answers it
    (it passes HTTP exceptions raised while reading a body through), else :class:`UploadLimit`
    does. ``reason``: ``too_large`` (413) or ``too_slow`` (408)."""

    def __init__(self, status: int, reason: str, text: str) -> None:
        self.reason = reason
        super().__init__(status, text)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if status in (408, 413):  # the rest of the body will not be read: the connection is done
        raw.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class UploadLimit:
    """Refuses a body larger than the limit of its path (``limit_for(path)`` gives the bytes
    and the sentence to answer with): at once when its declared Content-Length says so, else
    as soon as the bytes received pass the limit (the rest is never read, so a 1 GB upload
    costs the server 10 MB at most). A body still arriving ``timeout`` seconds after the
    request began is refused with 408."""

    def __init__(
        self, app: App, limit_for: Callable[[str], tuple[int, str]], timeout: float = 60.0
    ) -> None:
        self.app, self.limit_for, self.timeout = app, limit_for, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import anyio

        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        limit, text = self.limit_for(scope["path"])
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await send_json(send, 413, problem(text, "too_large"))
            return
        seen = 0
        complete = False
        started = False
        deadline = time.monotonic() + self.timeout

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:  # after the body, only a disconnect can come: no limit to wait for
                return await receive()
            try:
                with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                slow = f"The upload did not arrive within {self.timeout:g} s"
                raise BodyRefused(408, "too_slow", slow) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyRefused(413, "too_large", text)
                complete = not message.get("more_body", False)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, watched)
        except BodyRefused as exc:
            if started:
                raise
            await send_json(send, exc.status_code, problem(exc.detail, exc.reason))


class Busy(BodyRefused):
    """Raised from ``receive`` when a body has arrived but no place is free (503; answered
    like the other refusals of a body, with ``Retry-After``)."""

    def __init__(self, text: str, retry_after: int) -> None:
        super().__init__(503, "busy", text)
        self.retry_after = retry_after


class Gate:
    """At most ``capacity`` uploads in the house (being worked on, or waiting for one of the
    workers); one more is answered 503 with ``Retry-After``. An upload takes its place only
    once its whole body has arrived, so clients trickling bodies hold no worker place; while
    they trickle they count against ``per_client`` (uploads arriving or in the house from one
    address) and ``max_arriving`` (bodies arriving at once from everyone), beyond which they
    too are answered 503 before their body is read. Requests without a body (the page,
    health, the map) always pass."""

    def __init__(
        self,
        app: App,
        capacity: int,
        retry_after: int = 5,
        per_client: int = 8,
        max_arriving: int = 64,
    ) -> None:
        if capacity < 1 or per_client < 1 or max_arriving < 1:
            raise ValueError("capacity, per_client and max_arriving must be at least 1")
        self.app, self.capacity, self.retry_after = app, capacity, retry_after
        self.per_client, self.max_arriving = per_client, max_arriving
        self.active = 0  # bodies arrived, in the house; only touched on the event loop's thread
        self.arriving = 0
        self.by_client: dict[str, int] = {}

    async def _refuse(self, send: Send, text: str, before_body: bool = True) -> None:
        headers = {"Retry-After": str(self.retry_after)}
        if before_body:  # its body will not be read: the connection is done
            headers["Connection"] = "close"
        await send_json(send, 503, problem(text, "busy"), headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("?",))[0])
        if self.by_client.get(client, 0) >= self.per_client:
            text = f"Busy: {self.per_client} uploads from your address are already under way"
            await self._refuse(send, f"{text}; retry in {self.retry_after} s")
            return
        if self.arriving >= self.max_arriving or self.active >= self.capacity:
            text = (
                f"Busy: {self.active} uploads are being worked on or waiting and "
                f"{self.arriving} arriving; retry in {self.retry_after} s"
            )
            await self._refuse(send, text)
            return
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self.arriving += 1
        state = {"arriving": True, "admitted": False, "started": False}

        def arrived() -> None:
            if state["arriving"]:
                state["arriving"] = False
                self.arriving -= 1

        async def gated() -> Message:
            message = await receive()
            complete = message["type"] == "http.request" and not message.get("more_body", False)
            if complete and state["arriving"]:
                arrived()
                if self.active >= self.capacity:
                    raise Busy(
                        f"Busy: {self.active} uploads are being worked on or waiting; "
                        f"retry in {self.retry_after} s",
                        self.retry_after,
                    )
                self.active += 1
                state["admitted"] = True
            return message

        async def watched(message: Message) -> None:
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, gated, watched)
        except Busy as exc:  # when the app did not answer it itself
            if state["started"]:
                raise
            await self._refuse(send, str(exc.detail), before_body=False)
        finally:
            arrived()
            if state["admitted"]:
                self.active -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


def problem(detail: str, reason: str, file: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "reason": reason, "file": file}
