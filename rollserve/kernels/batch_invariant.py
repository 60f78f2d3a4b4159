"""Batch-invariant mode (--enable-deterministic-inference): every row's result is computed
by the same sequence of floating-point operations whatever else is in the batch, so a
request gives bitwise the same tokens and logprobs alone, in any batch, with any prefill
chunking and any prefix-cache state.

Why the default kernels are not: a GEMM library picks its blocking (and split-K) from the
matrix shape, so a row's dot products are summed in another order when the batch has
another number of rows. The cure, as Thinking Machines' batch_invariant_ops and SGLang's
deterministic mode do it, is reductions whose split does not depend on the batch:

* linear: on CPU each row is its own [1, K] x [K, N] product (the shape, hence the kernel
  and its summation order, never changes); on CUDA a Triton matmul with one fixed tile
  configuration and no split-K (batch_invariant_triton.py), where each output element is
  summed over K in the same fixed BLOCK_K steps whatever M is.
* RMSNorm: one row per program on CUDA (norm_triton.py already is); on CPU the torch
  reduction over a row shorter than torch's parallel grain (32768) runs serially per row.
* attention: executor/attention/batch_invariant.py, each query token against exactly its
  own visible keys.
* sampling: per-request seeds (scheduler/deterministic.py), never a generator shared by
  the batch.

A process-wide switch: the model runner turns it on at start and nothing turns it off.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from rollserve.kernels.dispatch import use_triton

_ENABLED = False


def enable() -> None:
    global _ENABLED
    _ENABLED = True


def enabled() -> bool:
    return _ENABLED


def linear_rowwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """F.linear, one row at a time: the reference batch-invariant matmul (any device)."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.empty(flat.shape[0], weight.shape[0], dtype=torch.result_type(flat, weight),
                      device=x.device)
    for i in range(flat.shape[0]):
        out[i:i + 1] = F.linear(flat[i:i + 1], weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batch-invariant F.linear: the fixed-tile Triton matmul where it runs, else row by row."""
    if use_triton(x) and x.dtype == weight.dtype and weight.dim() == 2:
        from rollserve.kernels.batch_invariant_triton import matmul_fixed_tiles

        flat = x.reshape(-1, x.shape[-1])
        out = matmul_fixed_tiles(flat, weight)
        if bias is not None:
            out = out + bias  # elementwise: invariant
        return out.view(*x.shape[:-1], weight.shape[0])
    return linear_rowwise(x, weight, bias)
