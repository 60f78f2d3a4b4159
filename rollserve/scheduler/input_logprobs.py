"""Logprobs read off a forward's logit rows beside each token's own: the prompt tokens'
(input_token_logprobs, input_top_logprobs), and at every position the top ones and those
of the ids a request lists in token_ids_logprob (SGLang's input_token_ids_logprobs /
output_token_ids_logprobs), as SGLang's meta_info reports them."""

from __future__ import annotations

import torch

from rollserve.core.batch import BatchEntry
from rollserve.executor.sampler import compute_logprobs, gather_token_logprobs, top_logprobs


def top_list(logprobs: torch.Tensor, k: int):
    """[N, V] -> per row, the k most likely (logprob, token id) pairs."""
    values, ids = top_logprobs(logprobs, k)
    return [list(zip(v, i)) for v, i in zip(values.tolist(), ids.tolist())]


def ids_list(logprobs: torch.Tensor, ids) -> list:
    """[N, V] -> per row, (logprob, token id) of each of `ids`, in their order."""
    values = logprobs[:, ids].tolist()
    return [list(zip(row, ids)) for row in values]


def record_output_extras(req, logprobs: torch.Tensor) -> None:
    """Output positions' [N, V] logprob rows: their top entries and listed ids, if asked."""
    if req.top_logprobs_num > 0:
        req.pending_output_top.extend(top_list(logprobs, req.top_logprobs_num))
    if req.token_ids_logprob:
        req.pending_output_ids.extend(ids_list(logprobs, req.token_ids_logprob))


def clear_input_logprobs(req) -> None:
    """What a request gathered from its prompt, to be redone (its prefill starts over)."""
    for pending in (req.pending_input_logprobs, req.pending_input_top, req.pending_input_ids):
        pending.clear()


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
        if req.token_ids_logprob:
            req.pending_input_ids.append(None)
    n_prompt_rows = sum(1 for r in entry.logit_rows if entry.start + r <= len(req.input_ids) - 2)
    if n_prompt_rows == 0:
        return
    logprobs = compute_logprobs(logits[:n_prompt_rows])
    targets = [req.input_ids[entry.start + r + 1] for r in entry.logit_rows[:n_prompt_rows]]
    values = gather_token_logprobs(logprobs, torch.tensor(targets, device=logprobs.device))
    req.pending_input_logprobs.extend(zip(values.tolist(), targets))
    if req.top_logprobs_num > 0:
        req.pending_input_top.extend(top_list(logprobs, req.top_logprobs_num))
    if req.token_ids_logprob:
        req.pending_input_ids.extend(ids_list(logprobs, req.token_ids_logprob))
