"""TRL's generation-server protocols, so GRPOTrainer(use_vllm=True, vllm_mode="server")
runs against rollserve with only the URL changed.

* vLLM's server API, which TRL's VLLMClient (TRL >= 1.x) and its async GRPO speak:
  /v1/completions and /v1/chat/completions with return_token_ids (api/openai_serving.py),
  GET /server_info, GET /get_world_size, POST /pause?mode=abort|wait|keep, /resume,
  GET /is_paused, POST /init_weight_transfer_engine, /start_weight_update,
  /update_weights {update_info} (dispatched from api/weight_sync_routes.py, where
  /update_weights is also SGLang's disk update), /finish_weight_update, /reset_prefix_cache.
* `trl vllm-serve` (TRL <= 0.2x): /get_world_size/, /generate/, /chat/,
  /init_communicator/, /update_named_param/, /reset_prefix_cache/, /close_communicator/.

Weight pushes are staged and applied whole (weight_sync/trainer_protocols.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Literal, Optional, Union

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from rollserve.api.engine_calls import generate_all
from rollserve.api.protocol import ApiError
from rollserve.api.sse import JSONBody
from rollserve.executor.sampler import default_logprob_mode
from rollserve.frontend.request_input import GenerateReqInput
from rollserve.weight_sync.packed import DEFAULT_BUFFER_SIZE_BYTES

logger = logging.getLogger(__name__)
PAUSE_MODES = ("abort", "wait", "keep")
# rollserve's server-wide logprob convention in vLLM's --logprobs-mode words
VLLM_LOGPROBS_MODES = {"raw": "raw_logprobs", "scaled": "temperature_scaled_logprobs"}
WAIT_POLL_S = 0.05
# vLLM SamplingParams names TRL may pass in generation_kwargs -> SGLang's names
VLLM_SAMPLING_NAMES = {"seed": "seed", "frequency_penalty": "frequency_penalty",
                       "presence_penalty": "presence_penalty", "stop": "stop",
                       "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos",
                       "min_tokens": "min_new_tokens", "skip_special_tokens": "skip_special_tokens",
                       "spaces_between_special_tokens": "spaces_between_special_tokens",
                       "logit_bias": "logit_bias", "logprob_mode": "logprob_mode"}


# ---- request bodies ------------------------------------------------------------------------------
class LegacySampling(BaseModel):
    n: int = 1
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    max_tokens: int = 16
    truncate_prompt_tokens: Optional[int] = None
    structured_outputs_regex: Optional[str] = None
    guided_decoding_regex: Optional[str] = None  # the older name
    generation_kwargs: Dict[str, Any] = Field(default_factory=dict)


class LegacyGenerateRequest(LegacySampling):
    prompts: Union[List[str], List[List[int]]]
    images: Optional[List[Any]] = None


class LegacyChatRequest(LegacySampling):
    messages: List[List[Dict[str, Any]]]
    chat_template_kwargs: Dict[str, Any] = Field(default_factory=dict)


class InitCommunicatorRequest(BaseModel):
    host: str
    port: int
    world_size: int
    client_device_uuid: Optional[str] = None


class UpdateNamedParamRequest(BaseModel):
    name: str
    dtype: str
    shape: List[int]


class InitInfo(BaseModel):
    # vLLM's two rendezvous: the trainer's store (master_address, master_port), or an NCCL
    # id the trainer minted and shares here (nccl_unique_id_b64, torch-free trainers)
    master_address: Optional[str] = None
    master_port: Optional[int] = None
    nccl_unique_id_b64: Optional[str] = None
    rank_offset: int = 1
    world_size: int = 2
    packed: bool = True
    packed_buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES
    backend: Optional[str] = None  # rollserve: gloo between CPU processes (NCCL on CUDA)
    # rollserve: which group the trainer opened. vLLM's own trainer_init sends neither this
    # nor backend, and gets "vllm" (its StatelessProcessGroup and PyNccl); rollserve's
    # helpers (examples/trl/rollserve_trl.py) send "torch" (a torch.distributed group)
    group: Optional[Literal["vllm", "torch"]] = None


class InitTransferRequest(BaseModel):
    init_info: InitInfo


class UpdateInfo(BaseModel):
    names: List[str]
    dtype_names: List[str]
    shapes: List[List[int]]
    packed: Optional[bool] = None  # older vLLM sent it per update; newer in init_info
    packed_buffer_size_bytes: Optional[int] = None
    is_checkpoint_format: bool = True


class UpdateWeightsRequest(BaseModel):
    update_info: UpdateInfo


class FinishWeightUpdateRequest(BaseModel):
    weight_version: Optional[str] = None


def _fail(result: dict) -> JSONBody:
    return JSONBody({"error": result.get("message", ""), **result}, status_code=400)


# ---- vLLM weight transfer (also reached from /update_weights in weight_sync_routes) ----------------
class TransferSettings:
    """What init_info said about the packing, for the update calls that follow."""

    packed: bool = True
    buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES


async def vllm_update_weights(state, request: Request) -> JSONBody:
    from rollserve.api.body import parse_body

    body = await parse_body(request, UpdateWeightsRequest)
    info, settings = body.update_info, _settings(state)
    result = await state.tm.rpc(
        "vllm_update_weights", names=info.names, dtype_names=info.dtype_names, shapes=info.shapes,
        packed=settings.packed if info.packed is None else info.packed,
        buffer_size_bytes=info.packed_buffer_size_bytes or settings.buffer_size_bytes)
    return JSONBody({"message": "Weights updated"}) if result.get("success") else _fail(result)


def _settings(state) -> TransferSettings:
    if not hasattr(state, "_vllm_transfer"):
        state._vllm_transfer = TransferSettings()
    return state._vllm_transfer


# ---- legacy generation ------------------------------------------------------------------------------
def legacy_sampling_params(body: LegacySampling) -> dict:
    params = {"n": body.n, "repetition_penalty": body.repetition_penalty,
              "temperature": body.temperature, "top_p": body.top_p,
              "top_k": -1 if body.top_k in (0, -1) else body.top_k, "min_p": body.min_p,
              "max_new_tokens": body.max_tokens,
              # TRL weighs its importance ratios with the distribution tokens were drawn from
              "logprob_mode": "sampling"}
    if body.structured_outputs_regex or body.guided_decoding_regex:  # vLLM's guided decoding
        params["regex"] = body.structured_outputs_regex or body.guided_decoding_regex
    for key, value in (body.generation_kwargs or {}).items():
        if key not in VLLM_SAMPLING_NAMES:
            raise ApiError(400, f"generation_kwargs.{key} is not supported (supported: "
                                f"{sorted(VLLM_SAMPLING_NAMES)})", f"generation_kwargs.{key}")
        params[VLLM_SAMPLING_NAMES[key]] = value
    return params


def _truncate(ids: List[int], keep: Optional[int]) -> List[int]:
    """vLLM's truncate_prompt_tokens: keep the last `keep` tokens (-1 or None: no cut here;
    the server still refuses a prompt over its input limit)."""
    return ids[-keep:] if keep and keep > 0 else ids


async def run_legacy(state, prompt_ids: List[List[int]], params: dict) -> dict:
    tm = state.tm
    state.check_alive()
    if not prompt_ids:
        raise ApiError(400, "no prompts", "prompts")
    obj = GenerateReqInput(input_ids=prompt_ids, sampling_params=params, return_logprob=True)
    items = await generate_all(tm, obj)
    logprobs = [[entry[0] for entry in r["meta_info"].get("output_token_logprobs", [])]
                for r in items]
    return {"prompt_ids": prompt_ids,
            "completion_ids": [r["output_ids"] for r in items],
            "logprobs": logprobs,
            "logprob_token_ids": [[[t] for t in r["output_ids"]] for r in items]}


# ---- routes ------------------------------------------------------------------------------------------
def add_trl_routes(app: FastAPI, state) -> None:
    from rollserve.api.body import optional_body, parse_body

    tm = state.tm
    tokenizer = tm.tokenizer

    async def world_size():
        return {"world_size": 1}  # one engine rank: the trainer joins as the second

    app.add_api_route("/get_world_size", world_size, methods=["GET"])
    app.add_api_route("/get_world_size/", world_size, methods=["GET"])

    @app.get("/server_info")
    async def server_info(config_format: str = "json"):
        info = await tm.rpc("weight_transfer_info")
        return {"vllm_config": {
            "model_config": {"model": tm.model_path, "dtype": info.get("dtype"),
                             "max_model_len": tm.context_len,
                             # the server-wide default; a request's logprob_mode "sampling"
                             # gives vLLM's processed_logprobs (TRL warns on anything else)
                             "logprobs_mode": VLLM_LOGPROBS_MODES[default_logprob_mode()]},
            "parallel_config": {"tensor_parallel_size": 1, "data_parallel_size": 1,
                                "world_size": 1},
            # TRL checks this is set before it opens its side of the weight push
            "weight_transfer_config": {"backend": info.get("backend")},
        }, "served_by": "rollserve"}

    # ---- pause / resume (vLLM's modes) -----------------------------------------------------------
    @app.post("/pause")
    async def pause(mode: str = "abort", wait_for_inflight_requests: bool = False,
                    clear_cache: bool = True):
        if wait_for_inflight_requests:
            mode = "wait"
        if mode not in PAUSE_MODES:
            raise ApiError(400, f"mode must be one of {PAUSE_MODES}, got {mode!r}", "mode")
        result = await tm.rpc("pause_generation", mode=mode)
        if not result.get("success"):
            return _fail(result)
        while mode == "wait" and not (await tm.rpc("is_paused")).get("is_paused"):
            await asyncio.sleep(WAIT_POLL_S)  # running requests finish; new ones wait
        return {"status": "paused"}

    @app.post("/resume")
    async def resume():
        await tm.rpc("continue_generation")
        return {"status": "resumed"}

    @app.get("/is_paused")
    async def is_paused():
        return {"is_paused": bool((await tm.rpc("is_paused")).get("is_paused"))}

    # ---- vLLM weight transfer ----------------------------------------------------------------------
    @app.post("/init_weight_transfer_engine")
    async def init_weight_transfer_engine(request: Request):
        info = (await parse_body(request, InitTransferRequest)).init_info
        settings = _settings(state)
        settings.packed, settings.buffer_size_bytes = info.packed, info.packed_buffer_size_bytes
        result = await tm.rpc("vllm_init_transfer", master_address=info.master_address,
                              master_port=info.master_port, rank_offset=info.rank_offset,
                              world_size=info.world_size, backend=info.backend,
                              group=info.group, nccl_unique_id_b64=info.nccl_unique_id_b64)
        return {"message": "Weight transfer initialized"} if result.get("success") else _fail(result)

    @app.post("/start_weight_update")
    async def start_weight_update():
        await tm.rpc("start_staged_update", source="the weight-transfer group")
        return {"message": "Weight update started"}

    @app.post("/finish_weight_update")
    async def finish_weight_update(request: Request):
        body = await optional_body(request, FinishWeightUpdateRequest)
        result = await tm.rpc("finish_staged_update", weight_version=body.weight_version)
        if not result.get("success"):
            return _fail(result)
        return {"message": "Weight update finished", "detail": result.get("message")}

    async def reset_prefix_cache():
        """Applies a legacy push staged since the last reset (TRL calls this right after
        pushing), else empties the prefix cache (refused while requests run, as vLLM)."""
        result = await tm.rpc("finish_staged_update")
        if not result.get("success"):
            return _fail(result)
        if result.get("message", "").startswith("nothing staged"):
            result = await tm.flush_cache()
        return {"success": bool(result.get("success")), "message": result.get("message", "")}

    app.add_api_route("/reset_prefix_cache", reset_prefix_cache, methods=["POST"])
    app.add_api_route("/reset_prefix_cache/", reset_prefix_cache, methods=["POST"])

    # ---- trl vllm-serve: generation ----------------------------------------------------------------
    @app.post("/generate/")
    async def legacy_generate(request: Request):
        body = await parse_body(request, LegacyGenerateRequest)
        if body.images and any(image is not None for image in body.images):
            raise ApiError(400, "images: image input is not supported (text models only)", "images")
        params = legacy_sampling_params(body)
        prompts = [_truncate(tokenizer.encode(p) if isinstance(p, str) else list(p),
                             body.truncate_prompt_tokens) for p in body.prompts]
        return await run_legacy(state, prompts, params)

    @app.post("/chat/")
    async def legacy_chat(request: Request):
        body = await parse_body(request, LegacyChatRequest)
        params = legacy_sampling_params(body)
        prompts = []
        for i, conversation in enumerate(body.messages):
            try:
                text = tokenizer.apply_chat_template(conversation, tokenize=False,
                                                     add_generation_prompt=True,
                                                     **body.chat_template_kwargs)
            except Exception as e:
                raise ApiError(400, f"messages[{i}]: cannot apply the chat template: {e}",
                               f"messages[{i}]") from e
            prompts.append(_truncate(tokenizer.encode(text, add_special_tokens=False),
                                     body.truncate_prompt_tokens))
        return await run_legacy(state, prompts, params)

    # ---- trl vllm-serve: weights -------------------------------------------------------------------
    @app.post("/init_communicator/")
    async def init_communicator(request: Request):
        body = await parse_body(request, InitCommunicatorRequest)
        result = await tm.rpc("trl_init_communicator", host=body.host, port=body.port,
                              world_size=body.world_size)
        return {"message": "Request received, initializing communicator"} \
            if result.get("success") else _fail(result)

    @app.post("/update_named_param/")
    async def update_named_param(request: Request):
        body = await parse_body(request, UpdateNamedParamRequest)
        check = await tm.rpc("trl_check_param", name=body.name, dtype=body.dtype, shape=body.shape)
        if not check.get("success"):
            return _fail(check)  # TRL raises before broadcasting: nobody waits on a partner
        # TRL broadcasts only after this answer, so the receive is sent now, not awaited
        task = asyncio.ensure_future(tm.rpc("trl_receive_param", name=body.name,
                                            dtype=body.dtype, shape=body.shape))
        task.add_done_callback(_log_receive)
        await asyncio.sleep(0)  # let it reach the scheduler's queue before we answer
        return {"message": "Request received, updating named parameter"}

    @app.post("/close_communicator/")
    async def close_communicator():
        result = await tm.rpc("trl_close_communicator")
        return {"message": "Request received, closing communicator"} \
            if result.get("success") else _fail(result)


def _log_receive(task: asyncio.Future) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        logger.error("update_named_param: %s", task.exception())
    elif not task.result().get("success"):
        logger.error("update_named_param: %s", task.result().get("message"))
