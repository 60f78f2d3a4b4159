"""Rotary position embedding (the rotate-half / GPT-NeoX layout Llama and Qwen use).

`compute_inv_freq` reproduces transformers' inverse-frequency formulas for each
rope_type, operation for operation, so that positions rotate exactly as in the
reference models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from rollserve.kernels.norm import rms_norm_torch

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def rope_parameters(hf_config) -> dict:
    """The config's rope settings as one flat dict with rope_type and rope_theta.

    transformers >= 5 keeps them in `rope_parameters`; older configs in `rope_scaling`
    (None when unscaled) next to a top-level `rope_theta`.
    """
    source = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    params = dict(source or {})
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", None) or 10000.0)
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if params["rope_type"] in ("llama3", "yarn"):
        params.setdefault("original_max_position_embeddings",
                          getattr(hf_config, "original_max_position_embeddings", None)
                          or hf_config.max_position_embeddings)
    return params


def _default_inv_freq(theta: float, dim: int) -> torch.Tensor:
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return 1.0 / (theta ** exponents)


def _llama3_inv_freq(params: dict, dim: int) -> torch.Tensor:
    inv_freq = _default_inv_freq(params["rope_theta"], dim)
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between blended.
    scaled = torch.where(wavelen > old_context_len / low, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context_len / high) * ~(wavelen > old_context_len / low)
    return torch.where(is_medium, blended, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(params: dict, dim: int, max_position_embeddings: int) -> Tuple[torch.Tensor, float]:
    base = params["rope_theta"]
    original_max = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_position_embeddings / original_max
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(factor)
    beta_fast = params.get("beta_fast") or 32
    beta_slow = params.get("beta_slow") or 1

    def correction_dim(num_rotations: float) -> float:
        return dim * math.log(original_max / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero in the ramp
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)

    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep_original = 1 - ramp  # 1 for the high-frequency dims, which are not interpolated
    inv_freq = interpolation * (1 - keep_original) + extrapolation * keep_original
    return inv_freq, float(attention_factor)


def compute_inv_freq(params: dict, head_dim: int, max_position_embeddings: int
                     ) -> Tuple[torch.Tensor, float]:
    """Returns (inv_freq float32 [head_dim // 2], attention_scaling applied to cos and sin)."""
    rope_type = params["rope_type"]
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    if rope_type in ("default", "dynamic"):
        # Dynamic NTK only changes the frequencies beyond max_position_embeddings,
        # which is also the longest context the engine serves by default.
        return _default_inv_freq(params["rope_theta"], head_dim), 1.0
    if rope_type == "linear":
        return _default_inv_freq(params["rope_theta"], head_dim) / params["factor"], 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(params, head_dim), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(params, head_dim, max_position_embeddings)
    raise ValueError(f"rope_type {rope_type!r} is not supported (supported: {SUPPORTED_ROPE_TYPES})")


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, attention_scaling: float
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair: two float32 [T, head_dim // 2]."""
    freqs = positions[:, None].float() * inv_freq[None, :]
    return freqs.cos() * attention_scaling, freqs.sin() * attention_scaling


def apply_rotary_torch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotates x [T, H, D] by cos/sin [T, D // 2]: pairs are (i, i + D/2), as rotate_half does."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotated copies of q [T, Hq, D] and k [T, Hkv, D]."""
    return apply_rotary_torch(q, cos, sin), apply_rotary_torch(k, cos, sin)


@dataclass
class RopeInputs:
    """What attention needs to rotate q and k itself (on CUDA fused with the KV store).

    cos/sin float32 [T, D // 2]; with q_norm_weight/k_norm_weight [D] (Qwen3) each q and k
    head is RMS-normalized with eps before the rotation.
    """
    cos: torch.Tensor
    sin: torch.Tensor
    q_norm_weight: Optional[torch.Tensor] = None
    k_norm_weight: Optional[torch.Tensor] = None
    eps: float = 1e-6

    def __post_init__(self):
        if (self.q_norm_weight is None) != (self.k_norm_weight is None):
            raise ValueError("RopeInputs: q_norm_weight and k_norm_weight must be given together")


def rotate_qk_torch(q: torch.Tensor, k: torch.Tensor, rope: RopeInputs
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The reference for what `rope` asks: per-head RMSNorm (if weights), then the rotation."""
    if rope.q_norm_weight is not None:
        q = rms_norm_torch(q, rope.q_norm_weight, rope.eps)
        k = rms_norm_torch(k, rope.k_norm_weight, rope.eps)
    return apply_rotary(q, k, rope.cos, rope.sin)


def rope_store_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope: RopeInputs,
                     kv_pool, layer_id: int, loc: torch.Tensor) -> torch.Tensor:
    """Reference of the fused rope_store_triton: rotates q and k, stores k and v in the pool
    at `loc`; returns the rotated q."""
    q, k = rotate_qk_torch(q, k, rope)
    kv_pool.store(layer_id, loc, k, v)
    return q
