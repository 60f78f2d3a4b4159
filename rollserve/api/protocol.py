"""Request and response shapes of the HTTP API: SGLang's native /generate and
OpenAI's /v1/chat/completions, /v1/completions and /v1/models."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

Stop = Optional[Union[str, List[str]]]


# ---- errors --------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: int


def error_body(status: int, message: str, param: Optional[str] = None,
               kind: str = "invalid_request_error") -> Dict[str, Any]:
    """OpenAI's {"error": {...}} and SGLang's flat {"object": "error", ...} in one body,
    so that both kinds of client find the message where they look for it."""
    detail = ErrorDetail(message=message, type=kind, param=param, code=status).model_dump()
    return {"object": "error", **detail, "error": detail}


# ---- native ----------------------------------------------------------------------------------
class GenerateRequest(BaseModel):
    """POST /generate; the types are loose on purpose: `normalize` checks the shapes
    (one prompt or a batch, per-item lists) and names the field it rejects."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    sampling_params: Optional[Union[Dict[str, Any], List[Dict[str, Any]]]] = None
    rid: Optional[Union[str, List[str]]] = None
    return_logprob: Union[bool, List[bool]] = False
    logprob_start_len: Union[int, List[int]] = -1
    top_logprobs_num: Union[int, List[int]] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    # MoE, with --enable-return-routed-experts: meta_info.routed_experts (SGLang's names)
    return_routed_experts: Union[bool, List[bool]] = False
    routed_experts_start_len: Union[int, List[int]] = 0
    # VLMs: an image (data URL, base64, file:// URL, local path) or a list, per prompt
    image_data: Optional[Any] = None


class AbortRequest(BaseModel):
    rid: Optional[str] = None
    abort_all: bool = False


class ProfileRequestBody(BaseModel):
    """POST /start_profile (SGLang's fields); all optional, null meaning the default as in
    SGLang (slime sends every field, null where unset). profile_by_stage is accepted
    false only: steps are not split into prefill and decode traces."""
    output_dir: Optional[str] = None
    num_steps: Optional[int] = None
    start_step: Optional[int] = None
    activities: Optional[List[str]] = None
    with_stack: Optional[bool] = None
    record_shapes: Optional[bool] = None
    profile_prefix: Optional[str] = None
    profile_by_stage: Optional[bool] = None
    profile_id: Optional[str] = None
    merge_profiles: Optional[bool] = None

    def profiler_fields(self) -> Dict[str, Any]:
        if self.profile_by_stage:
            raise ApiError(400, "profile_by_stage: per-stage traces are not implemented",
                           "profile_by_stage")
        if self.merge_profiles:
            raise ApiError(400, "merge_profiles: there is one process to profile, nothing to "
                                "merge", "merge_profiles")
        out = self.model_dump(exclude={"profile_by_stage", "profile_id", "merge_profiles"},
                              exclude_none=True)
        return out


# ---- weight sync (rollserve/api/weight_sync_routes.py), SGLang's names ----------------------
class InFlightFields(BaseModel):
    """rollserve's: what an update does to requests in flight (weight_sync/service.py)."""

    in_flight_requests: Optional[Literal["wait", "retract", "in_place", "restart", "abort"]] = None
    in_flight_timeout: Optional[float] = Field(default=None, ge=0)


class UpdateWeightsFromDiskRequest(InFlightFields):
    model_path: str
    load_format: Optional[str] = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    # rollserve's: check the checkpoint against the model, write nothing (the DP router asks
    # every worker first, so that a path one worker cannot read updates none of them)
    validate_only: bool = False


class UpdateWeightsFromTensorRequest(InFlightFields):
    serialized_named_tensors: List[str]  # buckets from weight_sync.tensor_transport
    load_format: Optional[str] = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None


class InitWeightsUpdateGroupRequest(BaseModel):
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = "weight_update_group"
    backend: Optional[Literal["gloo", "nccl"]] = None  # None: nccl on CUDA, gloo on CPU


class UpdateWeightsFromDistributedRequest(InFlightFields):
    names: List[str]
    dtypes: List[str]
    shapes: List[List[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    load_format: Optional[str] = None  # None or "flattened_bucket"


class DestroyWeightsUpdateGroupRequest(BaseModel):
    group_name: str = "weight_update_group"


MAX_TRUNCATE_SIZE = 1 << 20  # values one get_weights_by_name returns (weight_sync/service.py)


class GetWeightsByNameRequest(BaseModel):
    name: str
    truncate_size: int = Field(100, ge=0, le=MAX_TRUNCATE_SIZE)


class PauseGenerationRequest(BaseModel):
    mode: Literal["abort", "retract", "in_place", "keep", "wait"] = "abort"  # SGLang's default


class MemoryOccupationRequest(BaseModel):
    tags: Optional[List[str]] = None  # "weights", "kv_cache"; None: both


# ---- OpenAI: shared ----------------------------------------------------------------------------
class StreamOptions(BaseModel):
    include_usage: bool = False


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class SamplingFields(BaseModel):
    """The sampling knobs both OpenAI endpoints share, plus SGLang's extras."""

    model: str
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stop: Stop = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: Optional[int] = None
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None
    # SGLang extensions
    top_k: int = -1
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop_token_ids: Optional[List[int]] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    rid: Optional[str] = None
    # structured output (api/structured_output.py): OpenAI's response_format, SGLang's regex
    # and ebnf, vLLM's structured_outputs; at most one
    response_format: Optional[Dict[str, Any]] = None
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    # vLLM extensions (TRL's VLLMClient): the prompt's and each choice's token ids, tokens
    # named "token_id:<id>" in logprobs
    return_token_ids: bool = False
    return_tokens_as_token_ids: bool = False
    structured_outputs: Optional[Dict[str, Any]] = None
    prompt_logprobs: Optional[int] = None  # vLLM's: completions only (api/prompt_logprobs.py)
    # rollserve: which distribution logprobs describe (core/sampling_params.LOGPROB_MODES)
    logprob_mode: Optional[str] = None


# ---- OpenAI: chat ----------------------------------------------------------------------------
class ContentPart(BaseModel):
    type: str
    text: Optional[str] = None
    image_url: Optional[Union[str, Dict[str, Any]]] = None  # {"url": data URL or local file}


class ChatMessage(BaseModel):
    role: str
    content: Optional[Union[str, List[ContentPart]]] = None
    name: Optional[str] = None
    # an assistant turn's calls and a tool turn's answer (api/chat_tools.py checks them)
    tool_calls: Optional[List[Any]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class ChatCompletionRequest(SamplingFields):
    messages: List[ChatMessage]
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    # function calling (api/chat_tools.py checks the shapes and names the field it refuses)
    tools: Optional[List[Any]] = None
    tool_choice: Optional[Union[str, Dict[str, Any]]] = None
    parallel_tool_calls: bool = True
    # SGLang's: split the reasoning out with --reasoning-parser; extra template variables
    separate_reasoning: bool = True
    chat_template_kwargs: Optional[Dict[str, Any]] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: List[TokenLogprob]


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = None  # with --reasoning-parser
    tool_calls: Optional[List[ToolCall]] = None  # with tools and --tool-call-parser


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    matched_stop: Optional[Union[int, str]] = None
    token_ids: Optional[List[int]] = None  # with return_token_ids
    # rollserve's extension: [first token index, weight_version] per run of tokens one
    # policy sampled (meta_info.weight_version_spans of /generate; in a stream, the spans so far)
    weight_version_spans: Optional[List[List[Any]]] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatChoice]
    usage: Usage
    prompt_token_ids: Optional[List[int]] = None  # with return_token_ids
    metadata: Optional[Dict[str, Any]] = None  # SGLang's: {weight_version}


class FunctionCallDelta(BaseModel):
    name: Optional[str] = None  # on a call's first delta
    arguments: Optional[str] = None  # fragments, joined by the client


class ToolCallDelta(BaseModel):
    index: int
    id: Optional[str] = None  # on a call's first delta
    type: Optional[Literal["function"]] = None
    function: FunctionCallDelta


class DeltaMessage(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[List[ToolCallDelta]] = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None
    weight_version_spans: Optional[List[List[Any]]] = None  # as ChatChoice's, so far


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatStreamChoice]
    usage: Optional[Usage] = None


# ---- OpenAI: completions -----------------------------------------------------------------------
class CompletionRequest(SamplingFields):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: Optional[int] = 16  # OpenAI's default for the legacy endpoint; None: the rest of the context
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None


class CompletionLogprobs(BaseModel):
    tokens: List[str] = Field(default_factory=list)
    token_logprobs: List[Optional[float]] = Field(default_factory=list)
    top_logprobs: List[Optional[Dict[str, float]]] = Field(default_factory=list)
    text_offset: List[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None
    matched_stop: Optional[Union[int, str]] = None
    token_ids: Optional[List[int]] = None  # with return_token_ids
    prompt_token_ids: Optional[List[int]] = None
    prompt_logprobs: Optional[List[Optional[Dict[str, Any]]]] = None  # vLLM's, when asked
    # rollserve's extension: [first token index, weight_version] per run of tokens one
    # policy sampled (meta_info.weight_version_spans of /generate; in a stream, the spans so far)
    weight_version_spans: Optional[List[List[Any]]] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[CompletionChoice]
    usage: Optional[Usage] = None
    metadata: Optional[Dict[str, Any]] = None  # SGLang's: {weight_version}


# ---- OpenAI: models ----------------------------------------------------------------------------
class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "rollserve"
    root: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


# ---- embeddings and classification (api/embedding_serving.py) --------------------------------
class EncodeRequest(BaseModel):
    """POST /encode: one input or a batch, as text or token ids."""

    model_config = ConfigDict(extra="forbid")

    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    rid: Optional[Union[str, List[str]]] = None
    model: Optional[str] = None


class ClassifyRequest(EncodeRequest):
    """POST /classify: also chat conversations (one, or a list of them)."""

    messages: Optional[Union[List[Dict[str, Any]], List[List[Dict[str, Any]]]]] = None


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings (OpenAI)."""

    input: Union[str, List[str], List[int], List[List[int]]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: Union[List[float], str]  # str: base64 of little-endian float32
    index: int


class EmbeddingUsage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: List[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ApiError(Exception):
    """Raised by the translation layer; the app turns it into `error_body`."""

    def __init__(self, status: int, message: str, param: Optional[str] = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
