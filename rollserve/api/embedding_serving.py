"""Embedding and classification endpoints: SGLang's /encode and /classify, OpenAI's
/v1/embeddings. Each translates its body into an EncodeReqInput for the tokenizer
manager and shapes what comes back; validation and errors are the engine's."""

from __future__ import annotations

import base64
from typing import Any, Awaitable, Dict, List, Optional

import numpy as np
from fastapi import FastAPI, Request

from rollserve.api.protocol import (ApiError, ClassifyRequest, EmbeddingData, EmbeddingRequest,
                                    EmbeddingResponse, EmbeddingUsage, EncodeRequest)
from rollserve.api.sse import JSONBody, until_disconnect
from rollserve.frontend.encode_input import EncodeReqInput
from rollserve.frontend.encode_manager import RequestAborted
from rollserve.core.sampling_params import InvalidRequest

OPENAI_PARAM_NAMES = {"text": "input", "input_ids": "input"}


def add_embedding_routes(app: FastAPI, state) -> None:
    from rollserve.api.body import parse_body

    tm = state.tm

    @app.post("/encode")
    async def encode(request: Request):
        body = await parse_body(request, EncodeRequest)
        _check_model(state, body.model)
        obj = EncodeReqInput(text=body.text, input_ids=body.input_ids, rid=body.rid)
        return JSONBody(await run_encode_call(state, request, tm.encode(obj)))

    @app.post("/classify")
    async def classify(request: Request):
        body = await parse_body(request, ClassifyRequest)
        _check_model(state, body.model)
        obj = EncodeReqInput(text=body.text, input_ids=body.input_ids, messages=body.messages,
                             rid=body.rid)
        return JSONBody(await run_encode_call(state, request, tm.classify(obj)))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request):
        body = await parse_body(request, EmbeddingRequest)
        _check_model(state, body.model)
        if body.dimensions is not None:
            raise ApiError(400, "dimensions is not supported: embeddings have the model's own "
                                "size", "dimensions")
        results = await run_encode_call(state, request, tm.encode(openai_input(body.input)),
                                        OPENAI_PARAM_NAMES)
        results = results if isinstance(results, list) else [results]
        model = body.model or state.serving.model_name
        return JSONBody(embedding_response(results, model, body.encoding_format))


def _check_model(state, name: Optional[str]) -> None:
    if name is not None:
        state.serving.check_model(name)


async def run_encode_call(state, request: Request, work: Awaitable[Any],
                          param_names: Optional[Dict[str, str]] = None) -> Any:
    """Await the tokenizer manager (aborting if the client leaves); engine errors become
    API errors naming the field the client sent."""
    try:
        state.check_alive()
    except ApiError:
        work.close()  # the coroutine was never awaited
        raise
    try:
        return await until_disconnect(request, work)
    except InvalidRequest as e:
        param = (param_names or {}).get(e.field, e.field)
        raise ApiError(400, f"{param}: {e.message}", param) from e
    except RequestAborted as e:
        raise ApiError(503, str(e), kind="server_error") from e


def openai_input(value) -> EncodeReqInput:
    """OpenAI's `input` (a string, strings, token ids, or lists of token ids)."""
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str)):
        return EncodeReqInput(text=value)
    if isinstance(value, list) and value:
        return EncodeReqInput(input_ids=value)
    return EncodeReqInput(text=[])  # rejected as an empty batch


def embedding_response(results: List[dict], model: str, encoding_format: str) -> dict:
    data = [EmbeddingData(index=i, embedding=encode_vector(r["embedding"], encoding_format))
            for i, r in enumerate(results)]
    tokens = sum(r["meta_info"]["prompt_tokens"] for r in results)
    return EmbeddingResponse(data=data, model=model, usage=EmbeddingUsage(
        prompt_tokens=tokens, total_tokens=tokens)).model_dump()


def encode_vector(vector: List[float], encoding_format: str):
    if encoding_format == "base64":  # what the openai client asks for and decodes by default
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
