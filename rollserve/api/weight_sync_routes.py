"""The weight-sync HTTP endpoints, with SGLang's paths and bodies (api/protocol.py).

Updates answer {success, message, num_paused_requests}: 200 when applied, 400 when
refused (the message names the bad tensor or file; the old weights keep serving).
"""

from __future__ import annotations

import ipaddress
from fastapi import FastAPI, Request

from rollserve.api.protocol import (ApiError, DestroyWeightsUpdateGroupRequest,
                                    GetWeightsByNameRequest,
                                    InitWeightsUpdateGroupRequest, MemoryOccupationRequest,
                                    UpdateWeightsFromDiskRequest,
                                    UpdateWeightsFromDistributedRequest,
                                    UpdateWeightsFromTensorRequest)
from rollserve.api.sse import JSONBody
from rollserve.weight_sync import control

GET_OR_POST = ["GET", "POST"]


def is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _answer(result: dict) -> JSONBody:
    return JSONBody(result, status_code=200 if result.get("success") else 400)


def add_weight_sync_routes(app: FastAPI, state) -> None:
    from rollserve.api.body import load_json, optional_body, parse_body

    tm = state.tm

    async def update_from_disk(request: Request):
        body = await parse_body(request, UpdateWeightsFromDiskRequest)
        return _answer(await control.update_weights_from_disk(tm, **body.model_dump()))

    async def update_weights(request: Request):
        """SGLang's older name for the disk update, and vLLM's (TRL's) tensor push when the
        body carries update_info (api/trl_routes.py)."""
        from rollserve.api.trl_routes import vllm_update_weights

        try:
            raw = await request.body()
            is_vllm = b'"update_info"' in raw and "update_info" in load_json(raw)
        except (ApiError, TypeError):
            is_vllm = False  # parse_body names the problem below
        return await (vllm_update_weights(state, request) if is_vllm else update_from_disk(request))

    app.add_api_route("/update_weights_from_disk", update_from_disk, methods=["POST"])
    app.add_api_route("/update_weights", update_weights, methods=["POST"])

    @app.post("/update_weights_from_tensor")
    async def update_from_tensor(request: Request):
        body = await parse_body(request, UpdateWeightsFromTensorRequest)
        # SGLang's pickled formats only from this host, and only when the operator said so
        trusted = state.args.trust_local_pickled_tensors and is_loopback(request)
        return _answer(await control.update_weights_from_tensor(tm, **body.model_dump(),
                                                                allow_pickle=trusted))

    @app.post("/init_weights_update_group")
    async def init_group(request: Request):
        body = await parse_body(request, InitWeightsUpdateGroupRequest)
        return _answer(await control.init_weights_update_group(tm, **body.model_dump()))

    @app.post("/update_weights_from_distributed")
    async def update_from_distributed(request: Request):
        body = await parse_body(request, UpdateWeightsFromDistributedRequest)
        return _answer(await control.update_weights_from_distributed(tm, **body.model_dump()))

    @app.post("/destroy_weights_update_group")
    async def destroy_group(request: Request):
        body = await optional_body(request, DestroyWeightsUpdateGroupRequest)
        return _answer(await control.destroy_weights_update_group(tm, body.group_name))

    @app.api_route("/get_weights_by_name", methods=GET_OR_POST)
    async def get_weights_by_name(request: Request):
        body = await parse_body(request, GetWeightsByNameRequest)
        result = await control.get_weights_by_name(tm, body.name, body.truncate_size)
        return JSONBody(result["values"]) if result.get("success") else _answer(result)

    @app.api_route("/pause_generation", methods=GET_OR_POST)
    async def pause_generation():
        return _answer(await tm.rpc("pause_generation"))

    @app.api_route("/continue_generation", methods=GET_OR_POST)
    async def continue_generation():
        return _answer(await tm.rpc("continue_generation"))

    @app.api_route("/release_memory_occupation", methods=GET_OR_POST)
    async def release_memory(request: Request):
        body = await optional_body(request, MemoryOccupationRequest)
        return _answer(await control.release_memory_occupation(tm, body.tags))

    @app.api_route("/resume_memory_occupation", methods=GET_OR_POST)
    async def resume_memory(request: Request):
        body = await optional_body(request, MemoryOccupationRequest)
        return _answer(await control.resume_memory_occupation(tm, body.tags))
