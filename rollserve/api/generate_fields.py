"""The rest of SGLang's GenerateReqInput fields on POST /generate.

Trainers built on SGLang (verl's HTTP adapter, slime) send fields rollserve does not
implement, usually at their null or default value (verl sends `rid`, `image_data: null`,
`token_ids_logprob: null`; that one is implemented). Each one is accepted at its default; set to anything we
cannot honour it is refused with a 400 naming it, never ignored silently. Fields that
only label a request (metrics, tracing, routing hints that have one answer with a
single replica) are accepted whatever their value, as SGLang accepts them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from pydantic import BaseModel

from rollserve.api.protocol import ApiError, GenerateRequest

# field -> why a non-default value is refused
_UNSUPPORTED = {
    "input_embeds": "embeddings as input are not supported; send text or input_ids",
    "positional_embed_overrides": "embedding overrides are not supported",
    "video_data": "video input is not supported (text models only)",
    "audio_data": "audio input is not supported (text models only)",
    "modalities": "multimodal input is not supported",
    "return_hidden_states": "hidden states are not returned",
    "return_entropy": "entropy is not returned",
    "return_bytes": "byte outputs are only for image generation",
    "require_reasoning": "reasoning mode is for hybrid reasoning models only",
    "background": "background (responses API) requests are not supported",
    "session_params": "sessions are not implemented; the radix cache reuses shared prefixes",
    "lora_path": "LoRA is not implemented",
    "lora_id": "LoRA is not implemented",
    "custom_logit_processor": ("serialized logit processors are code and are never deserialized; "
                               "start the server with --custom-logit-processor MODULE:FUNCTION "
                               "and pass sampling_params.custom_params"),
    "bootstrap_host": "prefill/decode disaggregation is not implemented",
    "bootstrap_port": "prefill/decode disaggregation is not implemented",
    "bootstrap_room": "prefill/decode disaggregation is not implemented",
    "bootstrap_pair_key": "prefill/decode disaggregation is not implemented",
    "decode_tp_size": "prefill/decode disaggregation is not implemented",
    "need_wait_for_mm_inputs": "encoder disaggregation is not implemented",
    "num_items_assigned": "encoder disaggregation is not implemented",
    "max_dynamic_patch": "image tiling is for multimodal models only",
    "min_dynamic_patch": "image tiling is for multimodal models only",
    "image_max_dynamic_patch": "image tiling is for multimodal models only",
    "video_max_dynamic_patch": "image tiling is for multimodal models only",
    "extra_options": "no extra options are implemented",
}
# one replica: data-parallel rank hints may only name rank 0
_DP_RANKS = ("routed_dp_rank", "disagg_prefill_dp_rank", "data_parallel_rank")


class SGLangGenerateFields(BaseModel):
    """Accepted only at these defaults (see `check_sglang_fields`), except the labels."""

    input_embeds: Optional[Any] = None
    positional_embed_overrides: Optional[Any] = None
    video_data: Optional[Any] = None
    audio_data: Optional[Any] = None
    modalities: Optional[List[Any]] = None
    token_ids_logprob: Optional[Union[List[int], List[List[int]], List[Optional[List[int]]]]] = None
    return_hidden_states: Union[bool, List[bool]] = False
    return_entropy: bool = False
    return_bytes: bool = False
    require_reasoning: bool = False
    background: bool = False
    session_params: Optional[Any] = None
    lora_path: Optional[Any] = None
    lora_id: Optional[Any] = None
    custom_logit_processor: Optional[Any] = None
    bootstrap_host: Optional[Any] = None
    bootstrap_port: Optional[Any] = None
    bootstrap_room: Optional[Any] = None
    bootstrap_pair_key: Optional[Any] = None
    decode_tp_size: Optional[Any] = None
    need_wait_for_mm_inputs: Optional[bool] = None
    num_items_assigned: Optional[Any] = None
    max_dynamic_patch: Optional[int] = None
    min_dynamic_patch: Optional[int] = None
    image_max_dynamic_patch: Optional[int] = None
    video_max_dynamic_patch: Optional[int] = None
    extra_options: Optional[Dict[str, Any]] = None
    routed_dp_rank: Optional[int] = None
    disagg_prefill_dp_rank: Optional[int] = None
    data_parallel_rank: Optional[int] = None
    # labels: they change no result, any value is accepted (SGLang: metrics, tracing, routing)
    log_metrics: bool = True
    no_logs: bool = False
    custom_labels: Optional[Dict[str, str]] = None
    conversation_id: Optional[str] = None
    priority: Optional[int] = None
    extra_key: Optional[Union[str, List[str]]] = None
    routing_key: Optional[str] = None
    external_trace_header: Optional[Dict[str, Any]] = None
    received_time: Optional[float] = None


def _is_default(name: str, value: Any) -> bool:
    default = SGLangGenerateFields.model_fields[name].default
    if value is None or value == default:
        return True
    if isinstance(value, list):  # a batch: one default per item, or an empty list
        return all(_is_default(name, v) for v in value)
    if isinstance(value, dict):
        return not value
    return False


def check_sglang_fields(body: BaseModel) -> None:
    """Raises ApiError (400) naming the first field set to something rollserve cannot do."""
    for name, why in _UNSUPPORTED.items():
        value = getattr(body, name)
        if not _is_default(name, value):
            raise ApiError(400, f"{name}: {why} (got {_short(value)})", name)
    for name in _DP_RANKS:
        value = getattr(body, name)
        if value not in (None, 0):
            raise ApiError(400, f"{name}: this server is one data-parallel replica (rank 0), "
                                f"got {value}", name)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


SGLANG_FIELD_NAMES = frozenset(SGLangGenerateFields.model_fields)


class SGLangGenerateRequest(GenerateRequest, SGLangGenerateFields):
    """POST /generate: rollserve's fields, SGLang's others, and SGLang's nulls for the
    logprob options (null means the default there)."""

    return_logprob: Optional[Union[bool, List[bool]]] = False
    logprob_start_len: Optional[Union[int, List[int]]] = -1
    top_logprobs_num: Optional[Union[int, List[int]]] = 0

    def engine_fields(self) -> Dict[str, Any]:
        """The fields GenerateReqInput takes, after check_sglang_fields passed."""
        check_sglang_fields(self)
        out = self.model_dump(exclude=SGLANG_FIELD_NAMES)
        out["token_ids_logprob"] = self.token_ids_logprob  # implemented: passed on
        for name, default in (("return_logprob", False), ("logprob_start_len", -1),
                              ("top_logprobs_num", 0)):
            if out[name] is None:
                out[name] = default
        return out
