"""Rotary position embedding: cos/sin per position from the config's rope settings."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from rollserve.kernels.rotary import compute_inv_freq, rope_cos_sin, rope_parameters


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
