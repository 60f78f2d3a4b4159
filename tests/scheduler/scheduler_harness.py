"""Drives a Scheduler in-process (no ZeroMQ), so the batching logic is tested fast."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from rollserve.frontend.server_args import ServerArgs
from rollserve.core.io import TokenizedGenerateReq
from rollserve.executor.model_runner import ModelRunner
from rollserve.core.sampling_params import SamplingParams
from rollserve.scheduler.scheduler import Scheduler
from rollserve.core.tokenizer import eos_token_ids, load_tokenizer

_rids = itertools.count()


@dataclass
class Collected:
    output_ids: List[int] = field(default_factory=list)
    finished_reason: Optional[dict] = None
    cached_tokens: int = 0
    input_logprobs: list = field(default_factory=list)
    output_logprobs: list = field(default_factory=list)
    output_top: list = field(default_factory=list)
    routed_experts: Optional[str] = None


def make_scheduler(model_path: str, **overrides) -> Scheduler:
    args = ServerArgs(model_path=model_path, device="cpu", dtype="float32",
                      **{"max_total_tokens": 4096, **overrides})
    config = args.scheduler_config()
    runner = ModelRunner(config.executor)
    tokenizer = load_tokenizer(model_path)
    return Scheduler(config, runner, tokenizer, eos_token_ids(model_path, tokenizer))


def request(input_ids: List[int], rid: Optional[str] = None, **kwargs) -> TokenizedGenerateReq:
    logprob_keys = ("return_logprob", "logprob_start_len", "top_logprobs_num", "stream",
                    "return_routed_experts", "routed_experts_start_len")
    extra = {k: kwargs.pop(k) for k in logprob_keys if k in kwargs}
    params = SamplingParams(**kwargs)
    params.normalize_and_validate()
    return TokenizedGenerateReq(rid=rid or f"r{next(_rids)}", input_ids=list(input_ids),
                                sampling_params=params, **extra)


def run_all(scheduler: Scheduler, msgs: List[TokenizedGenerateReq], max_steps: int = 20000,
            arrivals: Optional[Dict[int, List[TokenizedGenerateReq]]] = None) -> Dict[str, Collected]:
    """Adds msgs, steps until all finished; `arrivals` adds more requests at given steps."""
    results: Dict[str, Collected] = defaultdict(Collected)
    for m in msgs:
        scheduler.add_request(m)
    for step in range(max_steps):
        for m in (arrivals or {}).pop(step, []):
            scheduler.add_request(m)
        if not scheduler.has_work() and not arrivals:
            return results
        for out in scheduler.step():
            got = results[out.rid]
            got.output_ids.extend(out.new_ids)
            got.cached_tokens = out.cached_tokens
            got.input_logprobs.extend(out.input_token_logprobs or [])
            got.output_logprobs.extend(out.output_token_logprobs or [])
            got.output_top.extend(out.output_top_logprobs or [])
            if out.finished_reason is not None:
                got.finished_reason = out.finished_reason
                got.routed_experts = out.routed_experts
    raise AssertionError("requests did not finish")


def hf_greedy(model, prompt: List[int], max_new_tokens: int) -> List[int]:
    """transformers' generate, greedy, EOS suppressed (min_new_tokens) like ours."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                             min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()
