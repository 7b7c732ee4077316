"""Two ASGI middlewares that keep hostile or heavy traffic from costing the server: a body
size limit enforced while the body streams in (413), a time limit for it to arrive and a
minimum transfer rate after a grace period (408, so that a client trickling bytes cannot hold a
place for long), and a cap on the uploads being worked on or waiting (503 with
``Retry-After``) that an upload joins only once its body has arrived, with caps on bodies
arriving per address and overall, shared fairly among addresses: when all places for arriving
bodies are taken, a newcomer takes the slowest body's place of the address holding the most."""

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
    does. ``reason``: ``too_large`` (413) or ``too_slow`` (408). ``body_read``: whether the
    whole body had arrived (else the connection must close)."""

    body_read = False
    retry_after: int | None = None

    def __init__(self, status: int, reason: str, text: str) -> None:
        self.reason = reason
        super().__init__(status, text)

    def headers_out(self) -> dict[str, str]:
        out = {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}
        if not self.body_read:
            out["Connection"] = "close"
        return out


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


MIN_RATE = 10 * 1024  # bytes a second, on average since the body began, after the grace
GRACE = 5.0  # seconds


class UploadLimit:
    """Refuses a body larger than the limit of its path (``limit_for(path)`` gives the bytes
    and the sentence to answer with): at once when its declared Content-Length says so, else
    as soon as the bytes received pass the limit (the rest is never read, so a 1 GB upload
    costs the server 10 MB at most). A body still arriving ``timeout`` seconds after the
    request began is refused with 408, and so is one that, ``grace`` seconds after it
    began, has arrived at under ``min_rate`` bytes a second on average: the time limit alone
    asks a 10 MB upload for 170 KB/s; the rate asks a small one for 10 KB/s, a tenth of what a
    phone on a poor line sends, so that a trickle holds its place seconds, not a minute."""

    def __init__(
        self,
        app: App,
        limit_for: Callable[[str], tuple[int, str]],
        timeout: float = 60.0,
        min_rate: float = MIN_RATE,
        grace: float = GRACE,
    ) -> None:
        self.app, self.limit_for, self.timeout = app, limit_for, timeout
        self.min_rate, self.grace = min_rate, grace

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
        began = time.monotonic()
        deadline = began + self.timeout

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:  # after the body, only a disconnect can come: no limit to wait for
                return await receive()
            # by when the next bytes must come: the overall limit, or the rate's
            rated = began + self.grace + seen / self.min_rate
            try:
                with anyio.fail_after(max(0.0, min(deadline, rated) - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                if rated < deadline:
                    slow = (
                        f"The upload arrived slower than {self.min_rate / 1024:g} KB/s "
                        f"and was dropped"
                    )
                else:
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
    """Raised from ``receive`` when a body has arrived but no place is free, or (``body_read``
    false) when a body still arriving gave its place to another address's (503; answered
    like the other refusals of a body, with ``Retry-After``)."""

    def __init__(self, text: str, retry_after: int, body_read: bool = True) -> None:
        super().__init__(503, "busy", text)
        self.retry_after, self.body_read = retry_after, body_read


class _Arriving:
    """One body arriving: its address, the bytes so far, and how to stop its wait."""

    def __init__(self, client: str) -> None:
        self.client, self.seen, self.evicted = client, 0, False
        self.scope: Any = None  # the anyio cancel scope of a receive under way

    def evict(self) -> None:
        self.evicted = True
        if self.scope is not None:
            self.scope.cancel()


class Gate:
    """At most ``capacity`` uploads in the house (being worked on, or waiting for one of the
    workers); one more is answered 503 with ``Retry-After``. An upload takes its place only
    once its whole body has arrived, so clients trickling bodies hold no worker place; while
    they trickle they count against ``per_client`` (uploads arriving or in the house from one
    address, beyond which 503 before the body is read) and ``max_arriving`` (bodies arriving
    at once from everyone). When ``max_arriving`` are arriving, a newcomer from an address
    with fewer bodies arriving than the address with the most, less one, takes the place of
    that address's slowest body (answered 503), else it is refused: a few addresses cannot
    lock the others out. Requests without a body (the page, health, the map) always pass."""

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
        self.by_client: dict[str, int] = {}
        self.bodies: list[_Arriving] = []  # bodies arriving
        self.evicted = 0

    @property
    def arriving(self) -> int:
        return len(self.bodies)

    async def _refuse(self, send: Send, text: str, before_body: bool = True) -> None:
        headers = {"Retry-After": str(self.retry_after)}
        if before_body:  # its body will not be read: the connection is done
            headers["Connection"] = "close"
        await send_json(send, 503, problem(text, "busy"), headers)

    def _make_room(self, client: str) -> bool:
        """Whether a newcomer from ``client`` may arrive now, evicting a body if it must."""
        if len(self.bodies) < self.max_arriving:
            return True
        counts: dict[str, int] = {}
        for body in self.bodies:
            if not body.evicted:
                counts[body.client] = counts.get(body.client, 0) + 1
        if not counts:
            return False
        heaviest = max(counts, key=counts.__getitem__)
        if counts[heaviest] <= counts.get(client, 0) + 1:
            return False  # the newcomer's address has its share already
        victim = min(
            (b for b in self.bodies if b.client == heaviest and not b.evicted),
            key=lambda b: b.seen,
        )
        victim.evict()
        self.bodies.remove(victim)  # its place is the newcomer's from now on
        self.evicted += 1
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import anyio

        if scope["type"] != "http" or scope["method"] not in WITH_BODY:
            await self.app(scope, receive, send)
            return
        client = str((scope.get("client") or ("?",))[0])
        if self.by_client.get(client, 0) >= self.per_client:
            text = f"Busy: {self.per_client} uploads from your address are already under way"
            await self._refuse(send, f"{text}; retry in {self.retry_after} s")
            return
        if self.active >= self.capacity or not self._make_room(client):
            text = (
                f"Busy: {self.active} uploads are being worked on or waiting and "
                f"{self.arriving} arriving; retry in {self.retry_after} s"
            )
            await self._refuse(send, text)
            return
        self.by_client[client] = self.by_client.get(client, 0) + 1
        body = _Arriving(client)
        self.bodies.append(body)
        state = {"arriving": True, "admitted": False, "started": False}

        def arrived() -> None:
            if state["arriving"]:
                state["arriving"] = False
                if body in self.bodies:
                    self.bodies.remove(body)

        def evicted() -> Busy:
            text = (
                f"Busy: many uploads are arriving slowly from your address; retry in "
                f"{self.retry_after} s"
            )
            return Busy(text, self.retry_after, body_read=False)

        async def gated() -> Message:
            if not state["arriving"]:
                return await receive()
            if body.evicted:
                raise evicted()
            with anyio.CancelScope() as cancel:
                body.scope = cancel
                message = await receive()
            body.scope = None
            if cancel.cancelled_caught:
                raise evicted()
            body.seen += len(message.get("body", b""))
            complete = message["type"] == "http.request" and not message.get("more_body", False)
            if complete:
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
            await self._refuse(send, str(exc.detail), before_body=not exc.body_read)
        finally:
            arrived()
            if state["admitted"]:
                self.active -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]


def problem(detail: str, reason: str, file: str | None = None) -> dict[str, Any]:
    return {"detail": detail, "reason": reason, "file": file}
