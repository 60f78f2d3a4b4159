"""RMSNorm as a module (the kernel and its reference are kernels/norm.py)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from rollserve.kernels.norm import rms_norm


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """norm(x), or with `residual`: (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual)
