"""Accumulates a request's outputs and shapes them as SGLang's /generate results:
{text, output_ids, meta_info: {id, finish_reason, prompt_tokens, completion_tokens,
cached_tokens, e2e_latency, weight_version, *_logprobs}}, plus rollserve's provenance:
weight_version_spans ([first output index, weight_version] per run of tokens sampled
under one version; every chunk of a stream carries the spans so far) and
stale_kv_tokens (tokens sampled on KV older weights computed, see
scheduler/weight_versions.py)."""

from __future__ import annotations

import time
import asyncio
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rollserve.core.io import TokenizedGenerateReq, TokenOutput


CUSTOM_PARAMS_IGNORED = ("ignored: the server has no custom logit processor "
                         "(start it with --custom-logit-processor MODULE:ATTRIBUTE)")


class ResultBuilder:
    def __init__(self, msg: TokenizedGenerateReq, tokenizer, text_in_logprobs: bool,
                 has_logit_processor: bool = False):
        self.msg = msg
        self.has_logit_processor = has_logit_processor
        self.tokenizer = tokenizer
        self.text_in_logprobs = text_in_logprobs
        self.start = time.perf_counter()
        self.text = ""
        self.output_ids: List[int] = []
        self.last: Optional[TokenOutput] = None
        self.first_token_latency: Optional[float] = None
        self.logprobs: Dict[str, list] = {"input_token_logprobs": [], "input_top_logprobs": [],
                                          "output_token_logprobs": [], "output_top_logprobs": [],
                                          "input_token_ids_logprobs": [],
                                          "output_token_ids_logprobs": []}

    def add(self, out: TokenOutput) -> None:
        self.text += out.text_delta
        self.output_ids.extend(out.new_ids)
        if out.new_ids and self.first_token_latency is None:
            self.first_token_latency = time.perf_counter() - self.start
        self.last = out
        if self.msg.return_logprob:
            for key in self.logprobs:
                self.logprobs[key].extend(getattr(out, key) or [])

    def result(self, index: Optional[int] = None) -> Dict[str, Any]:
        out = self.last
        meta: Dict[str, Any] = {
            "id": self.msg.rid,
            "finish_reason": out.finished_reason if out else None,
            "prompt_tokens": len(self.msg.input_ids),
            "completion_tokens": len(self.output_ids),
            "cached_tokens": out.cached_tokens if out else 0,
            "e2e_latency": time.perf_counter() - self.start,
            "weight_version": out.weight_version if out else None,
            "weight_version_spans": [list(span) for span in out.weight_version_spans] if out else [],
            "stale_kv_tokens": out.stale_kv_tokens if out else 0,
        }
        if self.first_token_latency is not None:
            meta["ttft"] = self.first_token_latency
        if out is not None and out.spec_verify_ct is not None:
            meta.update(spec_meta(out, len(self.output_ids)))
        if self.msg.sampling_params.custom_params is not None and not self.has_logit_processor:
            meta["custom_params"] = CUSTOM_PARAMS_IGNORED  # as SGLang, ignored; but said so
        if self.msg.return_logprob:
            meta.update(self._formatted_logprobs())
        # token-in/token-out trainers reproduce the prompt (streamed: once, with the last chunk)
        if self.msg.mm_inputs is not None and (not self.msg.stream or meta["finish_reason"]):
            meta["expanded_input_ids"] = list(self.msg.input_ids)
        if self.msg.return_routed_experts:
            meta["routed_experts"] = out.routed_experts if out else None
            meta["routed_experts_start_len"] = self.msg.routed_experts_start_len
        result = {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}
        if index is not None:
            result["index"] = index
        return result

    def _formatted_logprobs(self) -> Dict[str, list]:
        def entry(pair):
            logprob, token = pair
            text = self.tokenizer.decode([token]) if self.text_in_logprobs else None
            return [logprob, token, text]

        def top(entries):
            return None if entries is None else [entry(p) for p in entries]

        lp = self.logprobs
        formatted = {
            "input_token_logprobs": [entry(p) for p in lp["input_token_logprobs"]],
            "output_token_logprobs": [entry(p) for p in lp["output_token_logprobs"]],
        }
        if self.msg.top_logprobs_num > 0:
            formatted["input_top_logprobs"] = [top(e) for e in lp["input_top_logprobs"]]
            formatted["output_top_logprobs"] = [top(e) for e in lp["output_top_logprobs"]]
        if self.msg.token_ids_logprob:  # SGLang's keys, shaped as the top logprobs
            formatted["input_token_ids_logprobs"] = [top(e) for e in lp["input_token_ids_logprobs"]]
            formatted["output_token_ids_logprobs"] = [top(e) for e in lp["output_token_ids_logprobs"]]
        return formatted


@dataclass
class ReqState:
    """Results of one sample as they arrive from the detokenizer."""

    builder: ResultBuilder
    finished: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)


def spec_meta(out: TokenOutput, completion_tokens: int) -> Dict[str, Any]:
    """SGLang's speculative-decoding meta_info: verify forwards, tokens per verify (its
    accept length: completion tokens / verify forwards), accepted share of the drafts."""
    verify = out.spec_verify_ct
    return {"spec_verify_ct": verify,
            "spec_accept_length": completion_tokens / verify if verify else 0.0,
            "spec_accept_rate": (out.spec_accept_tokens / out.spec_draft_tokens
                                 if out.spec_draft_tokens else 0.0),
            "spec_accept_token_num": out.spec_accept_tokens,
            "spec_draft_token_num": out.spec_draft_tokens}
