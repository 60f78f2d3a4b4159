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


class MRotaryEmbedding(RotaryEmbedding):
    """Multimodal RoPE (Qwen2-VL): the rotary frequencies are split into sections (t, h, w)
    and section i rotates by position stream i % 3. Positions [3, T] give each stream its own
    index; positions [T] (decode, and every text token after the last image) are the same in
    all three streams, which is ordinary RoPE, so the table and CUDA graphs still apply."""

    def __init__(self, hf_config, head_dim: int, mrope_section):
        super().__init__(hf_config, head_dim)
        if sum(mrope_section) != head_dim // 2:
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to head_dim / 2 = "
                             f"{head_dim // 2}")
        stream = [i % 3 for i, n in enumerate(mrope_section) for _ in range(n)]
        self.register_buffer("stream_of_freq", torch.tensor(stream), persistent=False)

    def forward(self, positions: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if positions.dim() == 1:
            return super().forward(positions)
        # [3, T] -> cos/sin per stream [3, T, D/2]; frequency j takes its stream's row
        cos, sin = rope_cos_sin(positions.reshape(-1), self.inv_freq.float(), self.attention_scaling)
        pick = self.stream_of_freq[None, None, :].expand(1, positions.shape[1], -1)
        shape = (3, positions.shape[1], -1)
        return (cos.view(shape).gather(0, pick)[0], sin.view(shape).gather(0, pick)[0])
