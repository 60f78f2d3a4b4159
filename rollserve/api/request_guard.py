"""What every HTTP request passes before a route sees it, as plain ASGI (no buffering):
the API key, cross-site refusal, the body's Content-Type, and the body size limit.

Cross-site requests: a web page can make a browser POST to a server on localhost
(a `text/plain` form body needs no CORS preflight) or GET a URL (an <img> tag). So a
state-changing request that a browser marks as coming from another site is refused:
an `Origin` that is not this server's own host, or `Sec-Fetch-Site: cross-site` (or
`same-site`: another port of the same host).
Programs (curl, Python clients, trainers) send neither header and pass. Request bodies
are read only as JSON (`application/json` or a `+json` type): a browser cannot send
that cross-site without a preflight that this server never approves.
"""

from __future__ import annotations

import hmac
from typing import Callable, Dict, Optional
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from rollserve.api.body import PARSED_BODY, load_json
from rollserve.api.protocol import ApiError
from starlette.types import ASGIApp, Receive, Scope, Send

OPEN_PATHS = {"/health"}  # answered without the API key
UNLIMITED_BODY_PATHS = {"/update_weights_from_tensor"}  # a trainer's weight buckets are large
# GET routes that only read: a cross-site GET of these changes nothing (and CORS keeps the
# answer from the page). Every other request may change state and is checked.
READ_ONLY_GET_PATHS = {
    "/health", "/health_generate", "/get_model_info", "/get_server_info", "/metrics",
    "/v1/models", "/v1/loads", "/get_weight_version", "/weight_info", "/tokenizer_info",
    "/get_world_size", "/get_world_size/", "/server_info", "/is_paused",
}


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over the limit of {limit} bytes")


def changes_state(method: str, path: str) -> bool:
    if method in ("HEAD", "OPTIONS"):
        return False
    if method == "GET":
        return not (path in READ_ONLY_GET_PATHS or path.startswith("/v1/models/"))
    return True


def cross_site_reason(headers: Dict[str, str]) -> Optional[str]:
    """Why a browser marked this request as another site's, or None."""
    # same-site counts too: another port of this host is another site's page to us
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = headers.get("origin")
    if origin is None:
        return None
    parts = urlsplit(origin)
    if origin == "null" or not parts.netloc:
        return f"Origin {origin!r}"
    if parts.netloc.lower() != headers.get("host", "").lower():
        return f"Origin {origin!r} is not this server ({headers.get('host', '?')})"
    return None


def is_json_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def has_body(headers: Dict[str, str]) -> bool:
    length = headers.get("content-length", "")
    return (length.isdigit() and int(length) > 0) or "transfer-encoding" in headers


class GuardMiddleware:
    def __init__(self, app: ASGIApp, api_key: Optional[str], max_body_bytes: int,
                 error_response: Callable):
        self.app = app
        self.api_key = api_key
        self.limit = max_body_bytes
        self.error = error_response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, method = scope["path"], scope["method"]
        refusal = self._refusal(headers, path, method)
        if refusal is not None:
            return await self.error(*refusal)(scope, receive, send)
        if path in UNLIMITED_BODY_PATHS or not has_body(headers):
            return await self.app(scope, receive, send)
        # Read and check the JSON here, once, for every route: a route that ignores its body
        # must not act on a malformed one. The parsed value is handed on (api/body.py).
        chunks, received, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending the whole body
            chunks.append(message.get("body", b""))
            received += len(chunks[-1])
            if received > self.limit:
                return await self.error(413, BodyTooLarge(self.limit).detail)(scope, receive, send)
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        if raw.strip():
            try:
                scope.setdefault("state", {})[PARSED_BODY] = load_json(raw)
            except ApiError as e:
                return await self.error(e.status, e.message, e.param)(scope, receive, send)
        replayed = False

        async def replay():  # the body once, then the client's own messages (disconnects)
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self, headers: Dict[str, str], path: str, method: str):
        """(status, message, param, kind) when the request is refused before any route."""
        if self.api_key and path not in OPEN_PATHS and not self._authorized(headers):
            return (401, "invalid or missing API key (Authorization: Bearer KEY)", None,
                    "authentication_error")
        if changes_state(method, path):
            why = cross_site_reason(headers)
            if why:
                return (403, f"cross-site request refused ({why}): {method} {path} changes the "
                             "server's state; call it from a program, not a web page", None,
                        "permission_error")
        if has_body(headers) and not is_json_type(headers.get("content-type", "")):
            return (415, "request bodies must be JSON: send Content-Type: application/json "
                         f"(got {headers.get('content-type', 'none')!r})", "content-type",
                    "invalid_request_error")
        declared = headers.get("content-length", "")
        if path not in UNLIMITED_BODY_PATHS and declared.isdigit() and int(declared) > self.limit:
            return (413, BodyTooLarge(self.limit).detail, None, "invalid_request_error")
        return None

    def _authorized(self, headers: dict) -> bool:
        given = headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                   self.api_key.encode())
