"""SGLang endpoints that RL trainers call besides generation and weight pushes (slime's
SGLangEngine, verl's adapter): /v1/loads, /get_weight_version, /update_weight_version,
/weights_checker, /post_process_weights. Scheduler-side work is in
weight_sync/checker.py; the scheduler owns the weight version."""

from __future__ import annotations

import time
from typing import Dict, List, Optional

from fastapi import FastAPI, Request
from pydantic import BaseModel

from rollserve.api.protocol import ApiError
from rollserve.api.sse import JSONBody
from rollserve.version import __version__

GET_OR_POST = ["GET", "POST"]


class UpdateWeightVersionRequest(BaseModel):
    new_version: str
    # SGLang aborts running requests by default; a label change here leaves them running
    # unless asked (their results then carry the new label from their next output on)
    abort_all_requests: bool = False


class WeightsCheckerRequest(BaseModel):
    action: str
    checksums: Optional[Dict[str, str]] = None


class PostProcessWeightsRequest(BaseModel):
    restore_weights_before_load: bool = False
    post_process_quantization: bool = False


def _answer(result: dict) -> JSONBody:
    return JSONBody(result, status_code=200 if result.get("success") else 400)


def load_snapshot(info: dict) -> dict:
    """One scheduler's load in SGLang's /v1/loads shape (one data-parallel rank)."""
    running, queued = info["num_running_reqs"], info["num_queued_reqs"]
    used, total = info["kv_used_tokens"], info["max_total_num_tokens"]
    return {
        "dp_rank": 0,
        "num_running_reqs": running,
        "num_waiting_reqs": queued,
        "num_total_reqs": running + queued,
        "num_used_tokens": used,
        "max_total_num_tokens": total,
        "max_running_requests": info["max_running_requests"],
        "token_usage": round(used / total, 4) if total else 0.0,
        "gen_throughput": info.get("last_gen_throughput", 0.0),
        "cached_tokens": info.get("kv_cached_tokens", 0),
        "utilization": round(running / info["max_running_requests"], 4)
        if info["max_running_requests"] else 0.0,
    }


def add_sglang_extra_routes(app: FastAPI, state) -> None:
    from rollserve.api.body import optional_body, parse_body

    tm = state.tm

    @app.get("/v1/loads")
    async def loads(include: Optional[str] = None, dp_rank: Optional[int] = None):
        """`include` (core, memory, ... in SGLang) selects sections; this server has one
        section of counters, returned whatever is asked. dp_rank other than 0: no loads."""
        info = await tm.get_load()
        snapshots: List[dict] = [] if dp_rank not in (None, 0) else [load_snapshot(info)]
        return {"timestamp": time.time(), "version": __version__, "dp_rank_count": 1,
                "loads": snapshots,
                "aggregate": {"total_running_reqs": info["num_running_reqs"],
                              "total_waiting_reqs": info["num_queued_reqs"],
                              "total_reqs": info["num_running_reqs"] + info["num_queued_reqs"]}}

    @app.api_route("/get_weight_version", methods=GET_OR_POST)
    async def get_weight_version():
        return {"weight_version": (await tm.get_load()).get("weight_version")}

    @app.get("/weight_info")  # vLLM's name for the same
    async def weight_info():
        return {"weight_version": (await tm.get_load()).get("weight_version")}

    @app.post("/update_weight_version")
    async def update_weight_version(request: Request):
        body = await parse_body(request, UpdateWeightVersionRequest)
        return _answer(await tm.rpc("update_weight_version", new_version=body.new_version,
                                    abort_all_requests=body.abort_all_requests))

    @app.post("/weights_checker")
    async def weights_checker(request: Request):
        body = await parse_body(request, WeightsCheckerRequest)
        if body.action == "compare_checksum" and not body.checksums:
            raise ApiError(400, "checksums: compare_checksum needs {name: sha256 hex}", "checksums")
        return _answer(await tm.rpc("weights_checker", action=body.action,
                                    checksums=body.checksums))

    @app.post("/post_process_weights")
    async def post_process_weights(request: Request):
        body = await optional_body(request, PostProcessWeightsRequest)
        return _answer(await tm.rpc("post_process_weights", **body.model_dump()))
