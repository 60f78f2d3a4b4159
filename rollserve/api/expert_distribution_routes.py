"""SGLang's expert-distribution endpoints: start / stop a recording window of per layer, per
expert token counts, and dump it (to a file in the server's dump folder; also returned)."""

from __future__ import annotations

from fastapi import FastAPI

from rollserve.api.sse import JSONBody

GET_OR_POST = ["GET", "POST"]
CALLS = ("start_expert_distribution_record", "stop_expert_distribution_record",
         "dump_expert_distribution_record")


def add_expert_distribution_routes(app: FastAPI, state) -> None:
    def route(call: str):
        async def handler():
            result = await state.tm.rpc(call)
            return JSONBody(result, status_code=200 if result.get("success") else 400)
        return handler

    for call in CALLS:
        app.add_api_route(f"/{call}", route(call), methods=GET_OR_POST)
