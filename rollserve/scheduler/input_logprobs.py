"""Logprobs read off a forward's extra logit rows: the prompt tokens' own
(input_token_logprobs, input_top_logprobs), as SGLang's meta_info reports them."""

from __future__ import annotations

import torch

from rollserve.core.batch import BatchEntry
from rollserve.executor.sampler import compute_logprobs, gather_token_logprobs, top_logprobs


def top_list(logprobs: torch.Tensor, k: int):
    """[N, V] -> per row, the k most likely (logprob, token id) pairs."""
    values, ids = top_logprobs(logprobs, k)
    return [list(zip(v, i)) for v, i in zip(values.tolist(), ids.tolist())]


def record_input_logprobs(entry: BatchEntry, logits: torch.Tensor) -> None:
    """The logprobs of the prompt tokens this prefill chunk's logit rows predict (the first
    prompt token has none: SGLang reports it as None)."""
    req = entry.req
    if not req.wants_input_logprobs or req.output_ids:
        return
    if entry.start == 0 and req.logprob_start_len == 0:
        req.pending_input_logprobs.append((None, req.input_ids[0]))
        if req.top_logprobs_num > 0:
            req.pending_input_top.append(None)
    n_prompt_rows = sum(1 for r in entry.logit_rows if entry.start + r <= len(req.input_ids) - 2)
    if n_prompt_rows == 0:
        return
    logprobs = compute_logprobs(logits[:n_prompt_rows])
    targets = [req.input_ids[entry.start + r + 1] for r in entry.logit_rows[:n_prompt_rows]]
    values = gather_token_logprobs(logprobs, torch.tensor(targets, device=logprobs.device))
    req.pending_input_logprobs.extend(zip(values.tolist(), targets))
    if req.top_logprobs_num > 0:
        req.pending_input_top.extend(top_list(logprobs, req.top_logprobs_num))
