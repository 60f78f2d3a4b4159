"""Gated activations of the MLP: act(gate) * up on a fused [gate | up] projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rollserve.kernels.dispatch import use_triton


def silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    """x: [..., 2 * I] holding gate then up; returns silu(gate) * up, [..., I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    if use_triton(x):
        from rollserve.kernels.activation_triton import silu_and_mul_triton

        return silu_and_mul_triton(x)
    return silu_and_mul_torch(x)
