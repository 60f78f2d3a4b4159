"""Drawing next tokens from temperature / top_k / top_p / min_p filtered distributions.

One dispatch: on CUDA the sort-free Triton kernel; elsewhere the engine sampler's
sort-based reference (`filtered_weights`). Both pick argmax(weights / noise) with
the caller's Exp(1) noise, so given the same noise they draw the same token.
"""

from __future__ import annotations

from typing import Sequence

import torch

from rollserve.engine.sampling_params import SamplingParams
from rollserve.kernels.dispatch import host_to_device, use_triton


def params_table(params: Sequence[SamplingParams], vocab: int, device) -> torch.Tensor:
    """[B, 4] float32: temperature, top_k (vocab when unset), top_p, min_p."""
    table = torch.tensor([[p.temperature, p.top_k if 0 < p.top_k < vocab else vocab, p.top_p, p.min_p]
                          for p in params], dtype=torch.float32)
    return host_to_device(table, device)


def sample_filtered_torch(logits: torch.Tensor, params: Sequence[SamplingParams],
                          noise: torch.Tensor) -> torch.Tensor:
    from rollserve.engine.sampler import filtered_weights

    return (filtered_weights(logits, params) / noise).argmax(dim=-1)


def sample_filtered(logits: torch.Tensor, params: Sequence[SamplingParams],
                    noise: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float32 (non-greedy rows), noise [B, V] Exp(1) -> token ids [B] int64."""
    if use_triton(logits):
        from rollserve.kernels.sampling_triton import sample_triton

        return sample_triton(logits.contiguous(), params_table(params, logits.shape[-1], logits.device),
                             noise)
    return sample_filtered_torch(logits, params, noise)
