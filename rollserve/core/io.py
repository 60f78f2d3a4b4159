"""Messages between the processes (tokenizer manager -> scheduler -> detokenizer ->
tokenizer manager). Small dataclasses sent pickled over ZeroMQ; no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from rollserve.core.sampling_params import SamplingParams


@dataclass
class TokenizedGenerateReq:
    rid: str
    input_ids: List[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1  # -1: no input logprobs
    top_logprobs_num: int = 0
    stream: bool = False
    # MoE: answer the expert ids of tokens [routed_experts_start_len, seq_len - 1) when finished
    return_routed_experts: bool = False
    routed_experts_start_len: int = 0
    mm_inputs: Optional[Any] = None  # core/multimodal.py's MultimodalInputs (VLM prompts)
    token_ids_logprob: Optional[List[int]] = None  # SGLang's: logprobs of these ids at each position


@dataclass
class AbortReq:
    rid: Optional[str] = None
    abort_all: bool = False


@dataclass
class RpcReq:
    """A control call run by the scheduler process between steps, by name from its registry."""

    rpc_id: int
    method: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RpcResult:
    rpc_id: int
    result: Dict[str, Any]


HEARTBEAT_INTERVAL_S = 1.0


@dataclass
class Heartbeat:
    """Sent by the scheduler process every HEARTBEAT_INTERVAL_S (through the detokenizer,
    so it vouches for both): the front end calls the engine stalled when these stop."""

    pid: int
    loop_quiet_s: float = 0.0  # since the scheduler's loop last came round
    busy_with: Optional[str] = None  # the control call it is running, if any


@dataclass
class TokenOutput:
    """What one request produced since its previous TokenOutput."""

    rid: str
    new_ids: List[int]
    finished_reason: Optional[Dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    weight_version: str
    # the whole answer so far, not a delta: [first output index, version] per run of tokens
    weight_version_spans: List[List[Any]] = field(default_factory=list)
    stale_kv_tokens: int = 0  # tokens sampled on KV that older weights computed
    # speculative decoding, whole request so far: verify steps (None: off), drafts proposed, accepted
    spec_verify_ct: Optional[int] = None
    spec_draft_tokens: int = 0
    spec_accept_tokens: int = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    trim_stop: Optional[str] = None  # stop string to cut from the text when finished
    hold_back_chars: int = 0  # text not streamed yet because a stop string may start there
    # logprob deltas: (logprob, token_id); top entries: list of (logprob, token_id)
    input_token_logprobs: Optional[List[Tuple[Optional[float], int]]] = None
    input_top_logprobs: Optional[List[Optional[List[Tuple[float, int]]]]] = None
    output_token_logprobs: Optional[List[Tuple[float, int]]] = None
    output_top_logprobs: Optional[List[List[Tuple[float, int]]]] = None
    # token_ids_logprob: per position, (logprob, token_id) of each listed id (None: no logprob)
    input_token_ids_logprobs: Optional[List[Optional[List[Tuple[float, int]]]]] = None
    output_token_ids_logprobs: Optional[List[List[Tuple[float, int]]]] = None
    routed_experts: Optional[str] = None  # on the finished output only: SGLang's base64 int32
    text_delta: str = ""  # filled by the detokenizer


@dataclass
class TokenizedEmbeddingReq:
    """Encode or classify one input: prefilled, pooled, answered with one EmbeddingOutput."""

    rid: str
    input_ids: List[int]


@dataclass
class EmbeddingOutput:
    rid: str
    embedding: Optional[List[float]]  # embedding or classifier scores; None when aborted
    finished_reason: Optional[Dict[str, Any]]
    prompt_tokens: int
    cached_tokens: int
    weight_version: str


@dataclass
class BatchTokenOutput:
    outputs: List[TokenOutput]  # and EmbeddingOutput, which the detokenizer passes through
