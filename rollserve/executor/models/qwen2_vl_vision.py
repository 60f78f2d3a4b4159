"""The vision towers of Qwen2-VL and Qwen2.5-VL: patches -> ViT blocks -> patch merger.

Images arrive as the HF image processor makes them: `pixel_values` [patches, C*T*P*P] (the
patches of every image back to back, each image's in merge-block order) and one grid
(t, h, w) in patches per image. Attention never crosses images; Qwen2.5-VL's windowed blocks
attend only within windows of window_size pixels, its full-attention blocks
(`fullatt_block_indexes`) within the whole image. The merger folds each
spatial_merge_size x spatial_merge_size block of patches into one language-model token.

Not split under tensor parallelism: the tower is small beside the language model and runs
whole on every rank (executor/vision_dp.py may share the images out instead).
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rollserve.executor.layers.norm import RMSNorm
from rollserve.kernels.rotary import apply_rotary_torch

Grid = Tuple[int, int, int]

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
                "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def _activation(name: str):
    if name not in _ACTIVATIONS:
        raise ValueError(f"vision hidden_act {name!r} is not supported ({sorted(_ACTIVATIONS)})")
    return _ACTIVATIONS[name]


def merged_tokens(grid: Grid, merge: int) -> int:
    """Language-model tokens one image becomes."""
    t, h, w = grid
    return t * (h // merge) * (w // merge)


def _patch_positions(grids: Sequence[Grid], merge: int) -> torch.Tensor:
    """(row, column) of every patch [N, 2], patches in the processor's merge-block order."""
    out = []
    for t, h, w in grids:
        def blocked(grid: np.ndarray) -> np.ndarray:  # (row block, column block, row, column)
            return grid.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)

        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        out.append(np.tile(np.stack([blocked(rows), blocked(cols)], axis=-1), (t, 1)))
    return torch.from_numpy(np.concatenate(out)).long()


def _segment_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       lens: List[int]) -> torch.Tensor:
    """Bidirectional attention within each run of `lens` rows of q/k/v [N, H, D]. Runs of one
    length are stacked into one batch (windows, and images of one size, mostly share a length),
    so a layer is one unmasked SDPA call per distinct length: flash kernels, no padding."""
    if len(lens) == 1:
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
        return out.transpose(0, 1)
    starts = np.cumsum([0] + lens[:-1])
    by_len: dict = {}
    for start, n in zip(starts, lens):
        by_len.setdefault(n, []).append(start)
    out = torch.empty_like(q)
    for n, firsts in by_len.items():
        rows = torch.from_numpy((np.asarray(firsts)[:, None] + np.arange(n)[None, :]).reshape(-1))
        rows = rows.to(q.device)
        batched = [x[rows].view(len(firsts), n, *x.shape[1:]).transpose(1, 2) for x in (q, k, v)]
        attended = F.scaled_dot_product_attention(*batched)  # [B, H, n, D]
        out[rows] = attended.transpose(1, 2).reshape(-1, *q.shape[1:])
    return out


class VisionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                lens: List[int]) -> torch.Tensor:
        q, k, v = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim).unbind(1)
        # rotated in float32, as the reference does
        q = apply_rotary_torch(q.float(), cos, sin).to(v.dtype)
        k = apply_rotary_torch(k.float(), cos, sin).to(v.dtype)
        return self.proj(_segment_attention(q, k, v, lens).reshape(x.shape[0], -1))


class VisionMlp(nn.Module):
    """Qwen2-VL: fc2(act(fc1(x)))."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(dim, hidden), nn.Linear(hidden, dim), _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisionGatedMlp(nn.Module):
    """Qwen2.5-VL: down(act(gate(x)) * up(x)), with biases."""

    def __init__(self, dim: int, hidden: int, act: str):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(dim, hidden), nn.Linear(dim, hidden)
        self.down_proj, self.act = nn.Linear(hidden, dim), _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, rms_norm: bool):
        super().__init__()
        norm = (lambda: RMSNorm(dim, 1e-6)) if rms_norm else (lambda: nn.LayerNorm(dim, eps=1e-6))
        self.norm1, self.norm2 = norm(), norm()
        self.attn = VisionAttention(dim, num_heads)
        self.mlp = mlp

    def forward(self, x, cos, sin, lens):
        x = x + self.attn(self.norm1(x), cos, sin, lens)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    def __init__(self, out_dim: int, width: int, merge: int, rms_norm: bool):
        super().__init__()
        self.hidden = width * merge * merge
        self.ln_q = RMSNorm(width, 1e-6) if rms_norm else nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(self.hidden, self.hidden), nn.GELU(),
                                 nn.Linear(self.hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(x).view(-1, self.hidden))


class PatchEmbed(nn.Module):
    """A Conv3d whose stride is its kernel: one matrix product per flattened patch."""

    def __init__(self, in_channels: int, temporal: int, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Module()
        self.proj.weight = nn.Parameter(torch.empty(dim, in_channels, temporal, patch, patch))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        weight = self.proj.weight
        return F.linear(pixels.to(weight.dtype), weight.view(weight.shape[0], -1))


class Qwen2VisionTransformer(nn.Module):
    """Qwen2-VL: LayerNorm, fc1/fc2 MLP, full attention within each image."""

    rms_norm = False

    def __init__(self, vc):
        super().__init__()
        self.merge = vc.spatial_merge_size
        width, heads = self.width(vc), vc.num_heads
        self.patch_embed = PatchEmbed(vc.in_channels, vc.temporal_patch_size, vc.patch_size, width)
        self.blocks = nn.ModuleList(VisionBlock(width, heads, self.mlp(vc, width), self.rms_norm)
                                    for _ in range(vc.depth))
        self.merger = PatchMerger(self.out_dim(vc), width, self.merge, self.rms_norm)
        theta = float((getattr(vc, "rope_parameters", None) or {}).get("rope_theta", 10000.0))
        quarter = width // heads // 2  # h and w each rotate a quarter of the head, twice
        inv_freq = 1.0 / theta ** (torch.arange(0, quarter, 2, dtype=torch.float) / quarter)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    @staticmethod
    def width(vc) -> int:
        return vc.embed_dim

    @staticmethod
    def out_dim(vc) -> int:
        return vc.hidden_size

    @staticmethod
    def mlp(vc, width: int) -> nn.Module:
        return VisionMlp(width, int(width * vc.mlp_ratio), vc.hidden_act)

    def _rope(self, grids: Sequence[Grid]) -> Tuple[torch.Tensor, torch.Tensor]:
        positions = _patch_positions(grids, self.merge).to(self.inv_freq.device)
        angles = (positions[:, :, None].float() * self.inv_freq).reshape(positions.shape[0], -1)
        return angles.cos(), angles.sin()  # [N, head_dim / 2]: h frequencies, then w

    def _layout(self, grids: Sequence[Grid]):
        """(order of the patches for the blocks or None, per-block segment lengths)."""
        lens = [h * w for t, h, w in grids for _ in range(t)]
        return None, [lens] * len(self.blocks)

    def forward(self, pixels: torch.Tensor, grids: Sequence[Grid]) -> torch.Tensor:
        """Merged features [sum of merged_tokens(grid)], out_dim] for the images' patches."""
        x = self.patch_embed(pixels)
        cos, sin = self._rope(grids)
        order, block_lens = self._layout(grids)
        if order is not None:  # windows of merge blocks made contiguous
            unit = self.merge ** 2
            x = x.view(-1, unit, x.shape[-1])[order].reshape(x.shape)
            cos, sin = (t.view(-1, unit, t.shape[-1])[order].reshape(t.shape) for t in (cos, sin))
        for block, lens in zip(self.blocks, block_lens):
            x = block(x, cos, sin, lens)
        merged = self.merger(x)
        return merged if order is None else merged[torch.argsort(order)]


class Qwen2_5VisionTransformer(Qwen2VisionTransformer):
    """Qwen2.5-VL: RMSNorm, SwiGLU MLP, windowed attention except in fullatt_block_indexes."""

    rms_norm = True

    def __init__(self, vc):
        super().__init__(vc)
        self.window = vc.window_size // self.merge // vc.patch_size  # in merged tokens
        self.full_blocks = set(vc.fullatt_block_indexes)

    @staticmethod
    def width(vc) -> int:
        return vc.hidden_size

    @staticmethod
    def out_dim(vc) -> int:
        return vc.out_hidden_size

    @staticmethod
    def mlp(vc, width: int) -> nn.Module:
        return VisionGatedMlp(width, vc.intermediate_size, vc.hidden_act)

    def _layout(self, grids: Sequence[Grid]):
        """Merge blocks regrouped window by window (row-major windows of self.window^2 blocks,
        clipped at the image's edge); windowed blocks attend within each window."""
        order, window_lens, base, unit = [], [], 0, self.merge ** 2
        for t, h, w in grids:
            gh, gw = h // self.merge, w // self.merge
            ids = np.arange(t * gh * gw).reshape(t, gh, gw) + base
            for frame in ids:
                for r in range(0, gh, self.window):
                    for c in range(0, gw, self.window):
                        cell = frame[r:r + self.window, c:c + self.window].reshape(-1)
                        order.append(cell)
                        window_lens.append(cell.size * unit)
            base += t * gh * gw
        full = [h * w for t, h, w in grids for _ in range(t)]
        order_t = torch.from_numpy(np.concatenate(order)).long().to(self.inv_freq.device)
        return order_t, [full if i in self.full_blocks else window_lens
                         for i in range(len(self.blocks))]
