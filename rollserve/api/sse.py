"""Server-sent events and client disconnects.

A request whose client went away must stop generating and free its KV slots.
TokenizerManager.generate() aborts unfinished requests in its `finally`, so all
that matters here is that the generator really gets cancelled or closed when the
client disconnects, whether it is streaming or waiting for a whole answer.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Optional, Sequence, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"


def dumps(payload: Any) -> bytes:
    """JSON; a non-finite float (a -inf logprob) becomes null, as strict parsers need."""
    try:
        return json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(payload), ensure_ascii=False, allow_nan=False).encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def sse_event(payload: Any) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


class ClientDisconnected(Exception):
    pass


async def _wait_disconnect(receive: Receive) -> None:
    # The body was read already, so the server's receive() now only returns on disconnect.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` unless the client disconnects first; then cancel it and
    raise ClientDisconnected."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also reached when this handler itself is cancelled: take both tasks down with it.
        for task in (work, watcher):
            task.cancel()
        await asyncio.gather(work, watcher, return_exceptions=True)
    if work.cancelled():
        raise ClientDisconnected()
    return work.result()


class EventStreamResponse(Response):
    """Streams the byte events of an async generator; on client disconnect the
    generator is cancelled where it waits and closed, whatever state it is in."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], also_close: Sequence[AsyncGenerator] = (),
                 headers: Optional[dict] = None):
        # no Response.__init__: it would render an empty body and a Content-Length of 0
        self.events = events
        # `events` closes what it wraps only if it ever started; these are closed regardless
        self.also_close = list(also_close)
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sender = asyncio.ensure_future(self._send_all(send))
        watcher = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, watcher):
                task.cancel()
            await asyncio.gather(sender, watcher, return_exceptions=True)
            await self.events.aclose()
            for gen in self.also_close:
                await gen.aclose()

    async def _send_all(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self.events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
