"""Building blocks shared by the decoder-only models: norms, fused projections, rotary."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from rollserve.kernels.linear import rmsnorm_linear
from rollserve.kernels.norm import rms_norm
from rollserve.kernels.rotary import compute_inv_freq, rope_cos_sin, rope_parameters


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Parameters created inside get `dtype` (explicitly typed tensors are unaffected)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def head_dim_of(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def sliding_window_of(hf_config, layer_id: int) -> Optional[int]:
    """The attention window of one layer, or None for full attention.

    Configs with `layer_types` (Qwen2/3) say per layer; Mistral applies its window everywhere.
    """
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None and layer_types[layer_id] != "sliding_attention":
        return None
    return window


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None):
        """norm(x), or with `residual`: (norm(x + residual), x + residual)."""
        return rms_norm(x, self.weight, self.eps, residual)


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
    """

    def __init__(self, in_features: int, shards: Dict[str, int], bias: bool):
        super().__init__(in_features, sum(shards.values()), bias=bias)
        self.shards = dict(shards)

    def shard_rows(self) -> Dict[str, slice]:
        rows, start = {}, 0
        for name, size in self.shards.items():
            rows[name] = slice(start, start + size)
            start += size
        return rows


class RotaryEmbedding(nn.Module):
    """cos/sin for the positions of one forward, from the config's rope settings: rows of a
    table made once by `cache_positions` (one gather per forward instead of six small
    kernels), else computed."""

    MAX_CACHED_POSITIONS = 1 << 18  # 128 MiB of float32 at head_dim 128 (Llama 3's 131072 + 1 fit)

    def __init__(self, hf_config, head_dim: int):
        super().__init__()
        params = rope_parameters(hf_config)
        inv_freq, self.attention_scaling = compute_inv_freq(
            params, head_dim, hf_config.max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        self.cos_sin: Optional[torch.Tensor] = None  # [positions, head_dim]: cos | sin

    def cache_positions(self, num_positions: int) -> None:
        """Tabulates cos/sin for positions 0..num_positions-1 (the engine's context length);
        the same float32 arithmetic as the computed path, so the rows are bit-identical."""
        if num_positions > self.MAX_CACHED_POSITIONS:
            return
        positions = torch.arange(num_positions, device=self.inv_freq.device)
        self.cos_sin = torch.cat(rope_cos_sin(positions, self.inv_freq, self.attention_scaling), dim=-1)

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.cos_sin is None:
            return rope_cos_sin(positions, self.inv_freq.float(), self.attention_scaling)
        rows = self.cos_sin.index_select(0, positions)
        return rows.chunk(2, dim=-1)
