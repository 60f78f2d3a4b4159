"""A request's state inside the scheduler."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from rollserve.core.io import TokenizedGenerateReq, TokenOutput
from rollserve.core.sampling_params import SamplingParams


@dataclass(eq=False)  # a request is an entity: `in` / remove() on queues compare identity, fast
class Req:
    rid: str
    input_ids: List[int]
    sampling_params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False
    return_routed_experts: bool = False
    routed_experts_start_len: int = 0
    routed_experts: Optional[str] = None  # encoded at finish, before the KV slots are let go
    output_ids: List[int] = field(default_factory=list)
    # KV bookkeeping: the request's KV slots are req_to_token[req_pool_idx, :kv_len];
    # the first tree_len of them belong to the radix tree (locked through last_node).
    req_pool_idx: Optional[int] = None
    kv_len: int = 0
    tree_len: int = 0
    last_node: Any = None
    cached_tokens: int = 0
    num_retractions: int = 0  # times the KV pool ran full and this request gave its slots back
    retracted_computed: int = 0  # tokens it had computed when last retracted (0: none since)
    finished_reason: Optional[Dict[str, Any]] = None
    trim_stop: Optional[str] = None
    # outputs produced but not yet sent
    sent_output_len: int = 0
    pending_input_logprobs: List[Tuple[Optional[float], int]] = field(default_factory=list)
    pending_input_top: List[Optional[List[Tuple[float, int]]]] = field(default_factory=list)
    pending_output_logprobs: List[Tuple[float, int]] = field(default_factory=list)
    pending_output_top: List[List[Tuple[float, int]]] = field(default_factory=list)
    token_ids_logprob: Optional[List[int]] = None  # SGLang's: these ids' logprobs, each position
    pending_input_ids: List[Optional[List[Tuple[float, int]]]] = field(default_factory=list)
    pending_output_ids: List[List[Tuple[float, int]]] = field(default_factory=list)
    arrival_time: float = field(default_factory=time.monotonic)
    first_token_time: Optional[float] = None
    # provenance (scheduler/weight_versions.py): [first output index, weight_version] per run
    # of tokens sampled under one label; kv_epoch: the weight epoch its oldest KV was computed
    # under; stale_kv_tokens: tokens sampled while that KV came from older weights
    weight_version_spans: List[List[Any]] = field(default_factory=list)
    kv_epoch: int = 0
    stale_kv_tokens: int = 0
    grammar: Any = None  # scheduler/grammar.py GrammarState when sampling_params constrain it
    mm_inputs: Any = None  # core/multimodal.py's MultimodalInputs: images of a VLM prompt
    # speculative decoding (scheduler/speculative.py): verify steps run (None: speculation
    # off), drafts proposed / accepted, the drafter's own state (e.g. its n-gram index)
    spec_verify_ct: Optional[int] = None
    spec_draft_tokens: int = 0
    spec_accept_tokens: int = 0
    spec_state: Any = None

    @classmethod
    def from_message(cls, msg: TokenizedGenerateReq) -> "Req":
        return cls(rid=msg.rid, input_ids=list(msg.input_ids), sampling_params=msg.sampling_params,
                   return_logprob=msg.return_logprob, logprob_start_len=msg.logprob_start_len,
                   top_logprobs_num=msg.top_logprobs_num, stream=msg.stream,
                   return_routed_experts=msg.return_routed_experts,
                   routed_experts_start_len=msg.routed_experts_start_len, mm_inputs=msg.mm_inputs,
                   token_ids_logprob=msg.token_ids_logprob)

    @property
    def fill_ids(self) -> List[int]:
        """Every token whose KV the request needs: prompt plus generated tokens."""
        return self.input_ids + self.output_ids

    @property
    def radix_key(self) -> List[int]:
        """fill_ids as the prefix cache keys them: image tokens by their image's hash."""
        if self.mm_inputs is None:
            return self.fill_ids
        return self.mm_inputs.radix_key + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    @property
    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0

    @property
    def remaining_new_tokens(self) -> int:
        return max(0, self.sampling_params.max_new_tokens - len(self.output_ids))

    def finish(self, kind: str, matched: Any = None, message: Optional[str] = None,
               length: Optional[int] = None) -> None:
        """SGLang's shapes: {type: stop, matched}, {type: length, length}, {type: abort, message}."""
        if self.finished_reason is None:
            reason: Dict[str, Any] = {"type": kind}
            if kind == "stop":
                reason["matched"] = matched
            if kind == "length":
                reason["length"] = length
            if message:
                reason["message"] = message
            self.finished_reason = reason

    def take_output(self, weight_version: str) -> TokenOutput:
        """Everything produced since the previous call, as one TokenOutput."""
        params = self.sampling_params
        out = TokenOutput(
            rid=self.rid,
            new_ids=self.output_ids[self.sent_output_len:],
            finished_reason=self.finished_reason,
            prompt_tokens=len(self.input_ids),
            completion_tokens=len(self.output_ids),
            cached_tokens=self.cached_tokens,
            weight_version=weight_version,
            weight_version_spans=[list(span) for span in self.weight_version_spans],
            stale_kv_tokens=self.stale_kv_tokens,
            spec_verify_ct=self.spec_verify_ct,
            spec_draft_tokens=self.spec_draft_tokens,
            spec_accept_tokens=self.spec_accept_tokens,
            skip_special_tokens=params.skip_special_tokens,
            spaces_between_special_tokens=params.spaces_between_special_tokens,
            trim_stop=None if params.no_stop_trim else self.trim_stop,
            hold_back_chars=0 if params.no_stop_trim or not params.stop
            else max(len(s) for s in params.stop) - 1,
        )
        self.sent_output_len = len(self.output_ids)
        if self.finished:
            out.routed_experts = self.routed_experts
        if self.return_logprob:
            out.input_token_logprobs, self.pending_input_logprobs = self.pending_input_logprobs, []
            out.input_top_logprobs, self.pending_input_top = self.pending_input_top, []
            out.output_token_logprobs, self.pending_output_logprobs = self.pending_output_logprobs, []
            out.output_top_logprobs, self.pending_output_top = self.pending_output_top, []
            if self.token_ids_logprob:
                out.input_token_ids_logprobs, self.pending_input_ids = self.pending_input_ids, []
                out.output_token_ids_logprobs, self.pending_output_ids = self.pending_output_ids, []
        return out
