"""Drawing next tokens from temperature / top_k / top_p / min_p filtered distributions.

One dispatch: on CUDA the sort-free Triton kernel; elsewhere the engine sampler's
sort-based torch reference below (`filtered_weights`). Both pick argmax(weights / noise) with
the caller's Exp(1) noise, so given the same noise they draw the same token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rollserve.core.sampling_params import SamplingParams
from rollserve.kernels.dispatch import host_to_device, use_triton


# top_p alone needs each row sorted; a partial sort this wide (under 3% of a 150k
# vocab, a fifth of the time of a full sort on an H100) usually holds the top_p mass
TOP_P_CANDIDATES = 4096


def params_table(params: Sequence[SamplingParams], vocab: int, device) -> torch.Tensor:
    """[B, 4] float32: temperature, top_k (vocab when unset), top_p, min_p."""
    table = torch.tensor([[p.temperature, p.top_k if 0 < p.top_k < vocab else vocab, p.top_p, p.min_p]
                          for p in params], dtype=torch.float32)
    return host_to_device(table, device)


def sample_filtered_torch(logits: torch.Tensor, params: Sequence[SamplingParams],
                          noise: torch.Tensor) -> torch.Tensor:
    return (filtered_weights(logits, params) / noise).argmax(dim=-1)


def sample_filtered(logits: torch.Tensor, params: Sequence[SamplingParams],
                    noise: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float32 (non-greedy rows), noise [B, V] Exp(1) -> token ids [B] int64."""
    if use_triton(logits):
        from rollserve.kernels.sampling_triton import sample_triton

        return sample_triton(logits.contiguous(), params_table(params, logits.shape[-1], logits.device),
                             noise)
    return sample_filtered_torch(logits, params, noise)


# ---- temperature and filters --------------------------------------------------------------

def filtered_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """The distribution each (non-greedy) row samples from."""
    weights = filtered_weights(logits, params)
    return weights / weights.sum(dim=-1, keepdim=True)


def filtered_weights(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Temperature, softmax, then top_k, top_p and min_p zero the excluded tokens;
    not renormalized. Rows must not be greedy (temperature > 0)."""
    vocab = logits.shape[-1]
    table = torch.tensor(
        [[p.temperature, p.top_k if p.top_k > 0 else vocab, p.top_p, p.min_p] for p in params],
        dtype=torch.float32, device=logits.device)
    temperature, top_k, top_p, min_p = (column.unsqueeze(1) for column in table.unbind(1))
    probs = torch.softmax(logits / temperature, dim=-1)
    cut = [i for i, p in enumerate(params) if 0 < p.top_k < vocab or p.top_p < 1.0]
    widest = max((params[i].top_k if 0 < params[i].top_k < vocab else vocab for i in cut), default=0)
    if len(cut) == len(params):
        probs = _top_k_top_p(probs, top_k, top_p, widest)
    elif cut:  # sort only the rows that filter
        index = torch.tensor(cut, dtype=torch.int64, device=logits.device)
        probs[index] = _top_k_top_p(probs[index], top_k[index], top_p[index], widest)
    if any(p.min_p > 0.0 for p in params):
        probs = probs.masked_fill(probs < probs.amax(dim=-1, keepdim=True) * min_p, 0.0)
    return probs


def _top_k_top_p(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor,
                 widest: int) -> torch.Tensor:
    """Zero all but the k most likely tokens, then all but the smallest prefix of the
    survivors whose (renormalized) mass reaches top_p. top_k/top_p are [S, 1] (top_k =
    vocab where unset); widest = max(top_k), known on the host.

    Only as much of each row is sorted as its survivors can reach: the top `widest`
    when every row has a top_k; else the top TOP_P_CANDIDATES, with a full sort for
    the rows whose survivors do not all fit there (found on the device: one sync)."""
    vocab = probs.shape[-1]
    if widest < vocab:
        return _cut_sorted(probs, *probs.topk(widest, dim=-1), top_k, top_p)
    if vocab <= TOP_P_CANDIDATES:
        return _cut_sorted(probs, *probs.sort(dim=-1, descending=True), top_k, top_p)
    head, order = probs.topk(TOP_P_CANDIDATES, dim=-1)
    out = _cut_sorted(probs, head, order, top_k, top_p)
    fits = (top_k <= TOP_P_CANDIDATES) | ((top_k >= vocab) & (head.sum(dim=-1, keepdim=True) >= top_p))
    spill = (~fits).squeeze(1).nonzero().squeeze(1)
    if spill.numel():
        rows = probs[spill]
        out[spill] = _cut_sorted(rows, *rows.sort(dim=-1, descending=True), top_k[spill], top_p[spill])
    return out


def _cut_sorted(probs, sorted_probs, order, top_k, top_p) -> torch.Tensor:
    """Apply top_k and top_p to each row's largest probabilities (sorted_probs, with
    their token ids in order); everything not listed there is dropped."""
    vocab = probs.shape[-1]
    rank = torch.arange(sorted_probs.shape[-1], device=probs.device)
    sorted_probs = sorted_probs.masked_fill(rank >= top_k, 0.0)
    # a row without top_k keeps all its mass, which the softmax made 1
    kept_mass = torch.where(top_k >= vocab, 1.0, sorted_probs.sum(dim=-1, keepdim=True))
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    # top_p == 1 keeps everything even where float rounding makes mass_before reach the total
    past_top_p = (mass_before >= top_p * kept_mass) & (top_p < 1.0)
    sorted_probs = sorted_probs.masked_fill(past_top_p, 0.0)
    return torch.zeros_like(probs).scatter_(1, order, sorted_probs)
