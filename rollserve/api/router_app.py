"""The router's HTTP app (frontend/router.py does the routing): SGLang router's endpoints.

Generation endpoints go to one worker (streamed answers pass through as they come);
state-changing control calls go to every worker with one combined answer; reads
(/get_model_info, /v1/models, ...) go to one healthy worker. /add_worker?url=,
/remove_worker?url=, /list_workers manage the worker set; /get_server_info is the first
worker's with dp_size and every worker's status and internal state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Optional

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rollserve.frontend.router import NoWorkerError, Router
from rollserve.frontend.router_policy import request_text

logger = logging.getLogger(__name__)

ROUTED = ("/generate", "/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/encode",
          "/classify", "/tokenize", "/detokenize")
FAN_OUT = ("/flush_cache", "/update_weights_from_disk", "/update_weights_from_tensor",
           "/update_weights_from_distributed", "/init_weights_update_group",
           "/destroy_weights_update_group", "/pause_generation", "/continue_generation",
           "/release_memory_occupation", "/resume_memory_occupation", "/update_weight_version",
           "/abort_request", "/start_profile", "/stop_profile", "/post_process_weights")
# checked on every worker before any applies it (Router.update_all)
ALL_OR_NONE = ("/update_weights_from_disk",)
# what the router forwards of the client's headers (the body's type and its caller's key)
FORWARDED_HEADERS = ("content-type", "authorization")


def _headers(request: Request) -> dict:
    return {k: v for k, v in request.headers.items() if k.lower() in FORWARDED_HEADERS}


def _json(content: bytes) -> Optional[dict]:
    try:
        body = json.loads(content) if content else None
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _unavailable(e: Exception) -> JSONResponse:
    return JSONResponse({"error": {"message": str(e), "type": "service_unavailable", "code": 503}},
                        status_code=503)


def create_router_app(router: Router, health_interval_s: Optional[float] = None) -> FastAPI:
    app = FastAPI(title="rollserve router")

    @app.on_event("startup")
    async def _start() -> None:
        if health_interval_s:
            router.start_health_checks(health_interval_s)

    @app.on_event("shutdown")
    async def _stop() -> None:
        await router.close()

    async def routed(request: Request) -> Response:
        content = await request.body()
        body = _json(content)
        text = request_text(request.url.path, body)
        try:
            if body is not None and body.get("stream"):
                status, headers, chunks = await router.stream(
                    request.method, request.url.path, content, text, _headers(request))
                return StreamingResponse(chunks, status_code=status,
                                         media_type=headers.get("content-type"))
            r = await router.forward(request.method, request.url.path, content, text,
                                     _headers(request))
        except NoWorkerError as e:
            return _unavailable(e)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type"))

    async def fanned(request: Request) -> Response:
        path = request.url.path
        call = router.update_all if path in ALL_OR_NONE else router.fan_out
        status, answer = await call(request.method, path, await request.body(), _headers(request))
        return JSONResponse(answer, status_code=status)

    for path in ROUTED:
        app.add_api_route(path, routed, methods=["POST"])
    for path in FAN_OUT:
        app.add_api_route(path, fanned, methods=["POST", "GET"] if path == "/flush_cache" else ["POST"])

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200 if router.healthy() else 503)

    @app.get("/list_workers")
    async def list_workers() -> dict:
        return router.list_workers()

    @app.post("/add_worker")
    async def add_worker(url: str) -> JSONResponse:
        answer = await router.add_worker(url)
        return JSONResponse(answer, status_code=200 if answer["success"] else 400)

    @app.post("/remove_worker")
    async def remove_worker(url: str) -> JSONResponse:
        answer = router.remove_worker(url)
        return JSONResponse(answer, status_code=200 if answer["success"] else 404)

    @app.get("/get_server_info")
    async def get_server_info() -> Response:
        return await _server_info(router)

    @app.get("/{path:path}")
    async def read(path: str, request: Request) -> Response:
        """Reads (/get_model_info, /v1/models, /metrics, ...) from one healthy worker."""
        try:
            r = await router.forward("GET", "/" + path, b"", "", _headers(request))
        except NoWorkerError as e:
            return _unavailable(e)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type"))

    return app


async def _server_info(router: Router) -> Response:
    urls = list(router.workers)

    async def one(url: str):
        try:
            r = await router.client.get(url + "/get_server_info")
            return r.json() if r.status_code == 200 else None
        except Exception:  # a worker down: its status says so
            return None

    infos = await asyncio.gather(*(one(u) for u in urls))
    live = [i for i in infos if i]
    if not live:
        return _unavailable(NoWorkerError("no worker answers /get_server_info"))
    out = dict(live[0])
    out["dp_size"] = len(urls)
    out["internal_states"] = [s for i in live for s in i.get("internal_states", [])]
    out["workers"] = [{**router.workers[u].status(), "weight_version": i and i.get("weight_version")}
                      for u, i in zip(urls, infos)]
    out["router_policy"] = router.policy_name
    return JSONResponse(out)
