"""The FastAPI app: routes only validate, translate (openai_serving) and wait
(TokenizerManager); errors come back as OpenAI-style bodies."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, Response

from rollserve.api.embedding_serving import add_embedding_routes
from rollserve.api.flush_cache import flush_cache_response
from rollserve.api.expert_distribution_routes import add_expert_distribution_routes
from rollserve.api.body import optional_body, parse_body
from rollserve.api.request_guard import GuardMiddleware
from rollserve.api.metrics import ServerMetrics, observed
from rollserve.api.openai_serving import NativePlan, OpenAIServing, Plan, stream_with_errors
from rollserve.api.generate_fields import SGLangGenerateRequest
from rollserve.api.protocol import (AbortRequest, ApiError, ChatCompletionRequest,
                                    CompletionRequest, ProfileRequestBody, error_body)
from rollserve.api.sse import ClientDisconnected, EventStreamResponse, JSONBody, until_disconnect
from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.server_info import server_info
from rollserve.frontend.encode_manager import pooling_health_check
from rollserve.frontend.request_input import GenerateReqInput
from rollserve.core.sampling_params import InvalidRequest
from rollserve.frontend.tokenizer_manager import (EngineDeadError, EngineStalledError,
                                                  ShuttingDownError, TokenizerManager)
from rollserve.version import __version__
from rollserve.api.weight_sync_routes import add_weight_sync_routes
from rollserve.api.sglang_extra_routes import add_sglang_extra_routes
from rollserve.api.tokenize_routes import add_tokenize_routes
from rollserve.api.trl_routes import add_trl_routes
from rollserve.api.score_route import add_score_route
from rollserve.api.sequence_logprobs import add_sequence_logprobs_route

HEALTH_GENERATE_TIMEOUT_S = 30.0


@dataclass
class ServerState:
    args: ServerArgs
    tm: TokenizerManager
    serving: OpenAIServing
    metrics: Optional[ServerMetrics]
    dead_reason: Optional[str] = None  # set by the server's watchdog
    stopping: Optional[str] = None  # set at SIGTERM: new requests are refused (api/server.py)
    drain_task: Any = None
    exit_code: int = 0

    def why_dead(self) -> Optional[str]:
        if self.dead_reason or self.tm.dead_reason or self.stopping:
            return self.dead_reason or self.tm.dead_reason or self.stopping
        if not self.tm.procs.alive():
            return "the scheduler or detokenizer process died"
        return None

    def check_alive(self) -> None:
        """A 503 naming why, for a route about to submit work to a dead engine."""
        reason = self.why_dead()
        if reason:
            raise ApiError(503, f"the engine is down: {reason}", kind="server_error")


def build_state(args: ServerArgs, tm: TokenizerManager) -> ServerState:
    name = args.served_model_name or tm.model_path
    return ServerState(args=args, tm=tm, serving=OpenAIServing(tm, name),
                       metrics=ServerMetrics(name) if args.enable_metrics else None)


def error_response(status: int, message: str, param: Optional[str] = None,
                   kind: str = "invalid_request_error") -> JSONBody:
    return JSONBody(error_body(status, message, param, kind), status_code=status)


# ---- generation: one path for every endpoint ----------------------------------------------------
async def _first(results: AsyncIterator[Any]) -> Any:
    async with aclosing(results):
        async for out in results:
            return out


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async with aclosing(rest):
        yield first
        async for out in rest:
            yield out


async def run_plan(state: ServerState, request: Request, plan: Plan) -> Response:
    """Submit, then answer once or stream. The first result of a stream is awaited
    before the 200 is sent, so a request the engine rejects still gets a 4xx."""
    if state.stopping:
        raise ApiError(503, state.stopping, kind="server_error")
    state.check_alive()
    results = observed(state.tm.generate(plan.obj), state.metrics)
    try:
        if not plan.obj.stream:
            return JSONBody(plan.response(await until_disconnect(request, _first(results))))
        first = await until_disconnect(request, results.__anext__())
    except InvalidRequest as e:
        param = plan.param_name(e.field)
        raise ApiError(400, f"{param}: {e.message}", param) from e
    finally:
        if not plan.obj.stream:
            await results.aclose()
    events = stream_with_errors(plan.events(_prepend(first, results)))
    return EventStreamResponse(events, also_close=[results])


# ---- the app -------------------------------------------------------------------------------------
def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="rollserve", version=__version__)
    app.add_middleware(GuardMiddleware, api_key=state.args.api_key,
                       max_body_bytes=state.args.max_request_body_bytes,
                       error_response=error_response)
    _add_error_handlers(app)
    _add_native_routes(app, state)
    _add_openai_routes(app, state)
    add_embedding_routes(app, state)  # /encode, /classify, /v1/embeddings
    add_weight_sync_routes(app, state)  # /update_weights_from_*, memory occupation, ...
    add_sglang_extra_routes(app, state)  # /v1/loads, weight version, weights checker, ...
    add_tokenize_routes(app, state)  # /tokenize, /detokenize, /tokenizer_info
    add_trl_routes(app, state)  # TRL's and vLLM's trainer protocol (api/trl_routes.py)
    add_score_route(app, state)  # SGLang's /v1/score (api/score_route.py)
    add_sequence_logprobs_route(app, state)  # TRL's /get_sequence_logprobs/ (teacher logprobs)
    add_expert_distribution_routes(app, state)  # /{start,stop,dump}_expert_distribution_record
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return error_response(e.status, e.message, e.param, e.kind)

    @app.exception_handler(InvalidRequest)
    async def invalid_request(_, e: InvalidRequest):
        return error_response(400, str(e), e.field)

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return error_response(e.status_code, str(e.detail))

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_, e: EngineDeadError):
        what = "" if isinstance(e, ShuttingDownError) else (
            "the engine is not answering: " if isinstance(e, EngineStalledError) else "the engine is down: ")
        return error_response(503, f"{what}{e}", kind="server_error")

    @app.exception_handler(ClientDisconnected)
    async def disconnected(_, e: ClientDisconnected):
        return Response(status_code=499)  # nobody reads it; the request was aborted

    @app.exception_handler(Exception)
    async def unexpected(_, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}: {e}", kind="server_error")


def _add_native_routes(app: FastAPI, state: ServerState) -> None:
    tm = state.tm

    @app.get("/health")
    async def health():
        tm.start()
        reason = state.why_dead() or tm.health_problem()
        if reason:
            return error_response(503, f"unhealthy: {reason}", kind="server_error")
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate():
        reason = state.why_dead()
        if reason:
            return error_response(503, f"unhealthy: {reason}", kind="server_error")
        obj = GenerateReqInput(input_ids=[tm.tokenizer.eos_token_id or 0],
                               sampling_params={"max_new_tokens": 1, "temperature": 0})
        try:
            probe = (_first(tm.generate(obj)) if tm.is_generation
                     else pooling_health_check(tm, obj.input_ids))
            await asyncio.wait_for(probe, HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return error_response(503, "no token generated in time", kind="server_error")
        return Response(status_code=200)

    @app.post("/generate")
    async def generate(request: Request):
        body = await parse_body(request, SGLangGenerateRequest)
        return await run_plan(state, request, NativePlan(GenerateReqInput(**body.engine_fields())))

    @app.get("/get_model_info")
    async def get_model_info():
        return await tm.model_info()

    @app.get("/get_server_info")
    async def get_server_info():
        return server_info(state.args, await tm.get_load(), __version__)

    @app.api_route("/flush_cache", methods=["GET", "POST"])  # slime uses GET, SGLang takes both
    async def flush_cache(request: Request):
        return await flush_cache_response(tm, request.query_params.get("timeout"))

    @app.post("/start_profile")
    async def start_profile(request: Request):
        body = await optional_body(request, ProfileRequestBody)
        result = await tm.rpc("start_profile", **body.profiler_fields())
        return JSONBody(result, status_code=200 if result.get("success") else 400)

    @app.post("/stop_profile")
    async def stop_profile():
        result = await tm.rpc("stop_profile")
        return JSONBody(result, status_code=200 if result.get("success") else 400)

    @app.post("/abort_request")
    async def abort_request(request: Request):
        body = await parse_body(request, AbortRequest)
        if not body.rid and not body.abort_all:  # verl's defaults (rid="", abort_all=False)
            return {"success": True, "message": "nothing to abort: no rid and abort_all false"}
        await tm.abort(body.rid, body.abort_all)
        return {"success": True}

    @app.get("/metrics")
    async def metrics():
        if state.metrics is None:
            raise ApiError(404, "metrics are off; start the server with --enable-metrics")
        text = state.metrics.render(await tm.get_load())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def _add_openai_routes(app: FastAPI, state: ServerState) -> None:
    serving = state.serving

    @app.get("/v1/models")
    async def models():
        return serving.models()

    @app.get("/v1/models/{model:path}")  # served names may be paths, slashes included
    async def model(model: str):
        return serving.model(model)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await parse_body(request, ChatCompletionRequest)
        return await run_plan(state, request, serving.plan_chat(body))

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse_body(request, CompletionRequest)
        return await run_plan(state, request, serving.plan_completion(body))
