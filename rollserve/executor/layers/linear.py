"""Linear layers of the decoder models: fused projections (q|k|v, gate|up) and a norm fused
into the projection after it. Under tensor parallelism a FusedLinear is column-parallel: it
holds this rank's rows of each projection (`slices`, see layers/parallel.py)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from rollserve.executor.layers.norm import RMSNorm
from rollserve.kernels.linear import rmsnorm_linear


def norm_then_linear(norm: RMSNorm, proj: nn.Linear, x: torch.Tensor,
                     residual: Optional[torch.Tensor], silu_mul: bool = False
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(proj(norm(x [+ residual])), the new residual stream), with silu_and_mul applied to the
    projection when silu_mul (proj is gate|up); see kernels/linear.py for the kernels."""
    if residual is None:
        return rmsnorm_linear(x, None, norm.weight, norm.eps, proj.weight, proj.bias, silu_mul), x
    return rmsnorm_linear(x, residual, norm.weight, norm.eps, proj.weight, proj.bias, silu_mul)


class FusedLinear(nn.Linear):
    """One matmul for several projections of the same input (q|k|v, gate|up).

    `shards` maps each projection's checkpoint name (e.g. "q_proj") to its output
    size, in output order; the weight loader fills each shard's rows separately.
    `slices` (tensor parallel): {"q_proj.weight": CheckpointSlice, ...}, which rows of each
    checkpoint tensor this rank's shard holds.
    """

    def __init__(self, in_features: int, shards: Dict[str, int], bias: bool,
                 slices: Optional[Dict[str, object]] = None):
        super().__init__(in_features, sum(shards.values()), bias=bias)
        self.shards = dict(shards)
        self.tp_slices = dict(slices or {})

    def shard_rows(self) -> Dict[str, slice]:
        rows, start = {}, 0
        for name, size in self.shards.items():
            rows[name] = slice(start, start + size)
            start += size
        return rows
