"""RMSNorm, optionally fused with the residual add that precedes it."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from rollserve.kernels.dispatch import use_triton


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float,
                   residual: Optional[torch.Tensor] = None
                   ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Without `residual`: returns norm(x). With it: returns (norm(x + residual), x + residual).

    The statistics are taken in float32 and the result is cast back before the weight
    multiply, as transformers' LlamaRMSNorm does, so half-precision outputs match it.
    """
    if residual is not None:
        x = x + residual
        residual = x
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * normed.to(x.dtype)
    return out if residual is None else (out, residual)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             residual: Optional[torch.Tensor] = None):
    """On CUDA the Triton kernel, which writes the new residual into `residual` in place."""
    if use_triton(x):
        from rollserve.kernels.norm_triton import rms_norm_triton, triton_supports

        if triton_supports(x, weight):
            return rms_norm_triton(x, weight, eps, residual)
    return rms_norm_torch(x, weight, eps, residual)
