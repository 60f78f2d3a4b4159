"""Multi-head latent attention (DeepSeek-V2/V3) over the latent KV pool (mla_kv_pool.py).

Each token caches c (kv_lora_rank) and its rotated k_pe (rope dims). Head h's key is
[W_UK_h c | k_pe] and its value W_UV_h c, where kv_b_proj = [W_UK; W_UV] per head. Two ways
to attend, equal in exact arithmetic:
- absorbed (decode): q_h's no-rope part is moved into latent space, q_lat = W_UK_h^T q_nope, so
  scores are [q_lat | q_pe] . [c | k_pe] over the cache as it is (one shared "head", MQA), and
  the output W_UV_h (sum_s p_s c_s). Reads only the latents: what decode is bound by.
- expanded (extend): the sequence's latents (cached prefix + new tokens) are expanded into
  per-head K/V and attended as ordinary MHA; fewer FLOPs than the absorbed form when many
  queries share the keys.
`mla_attention` is what the model calls: the MLA backend when the runner built the latent
pool, else (--disable-mla) the expanded K/V of the new tokens through the ordinary backend.
A Triton decode kernel over the latent pool is a GPU follow-up; this backend is the torch path.
Tree forwards (speculative tree drafts, NEXTN) need no fallback: both forms take each request's
dense [E, S] tree mask (attention/tree_mask.py) in their SDPA. With --disable-mla the expanded
K/V go through the ordinary backend, whose tree path applies (triton: its tree kernel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend, attention
from rollserve.executor.attention.tree_mask import dense_tree_mask
from rollserve.kernels.linear import linear


@dataclass(frozen=True)
class MLADims:
    num_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.qk_rope_head_dim


def _split_kv_b(kv_b_weight: torch.Tensor, d: MLADims):
    """kv_b_proj's weight [H * (nope + v), R] as W_UK [H, nope, R] and W_UV [H, v, R] (views)."""
    per_head = kv_b_weight.view(d.num_heads, d.qk_nope_head_dim + d.v_head_dim, d.kv_lora_rank)
    return per_head[:, :d.qk_nope_head_dim], per_head[:, d.qk_nope_head_dim:]


def _attend(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, prefix_len: int,
            scaling: float, tree: Optional[torch.Tensor] = None) -> torch.Tensor:
    """queries [H, E, D] (the request's new tokens), keys [H or 1, S, D], values [H or 1, S, Dv]
    with S = prefix_len + E; causal: new token j sees positions <= prefix_len + j, or what the
    [E, S] tree mask allows (attention/tree_mask.py)."""
    num_new, seq_len = queries.shape[1], keys.shape[1]
    keys = keys.expand(queries.shape[0], -1, -1)
    values = values.expand(queries.shape[0], -1, -1)
    if tree is not None:
        mask = tree
    elif num_new == 1:
        mask = None  # the last token sees everything
    else:
        query_pos = torch.arange(prefix_len, prefix_len + num_new, device=queries.device)
        mask = torch.arange(seq_len, device=queries.device)[None, :] <= query_pos[:, None]
    return F.scaled_dot_product_attention(queries, keys.to(queries.dtype), values.to(queries.dtype),
                                          attn_mask=mask, scale=scaling)


class MLABackend(AttentionBackend):
    """The torch MLA path over the latent pool. `absorb_extend` also runs extends absorbed
    (tests check both forms agree)."""

    name = "mla"
    supports_tree_mask = True

    def __init__(self, device: torch.device, num_kv_heads: int = 1, absorb_extend: bool = False):
        super().__init__(device, num_kv_heads)
        self.absorb_extend = absorb_extend

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        raise TypeError("MLA models call mla_attention (the latent pool holds no per-head K/V)")

    def forward_mla(self, q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor,
                    k_pe: torch.Tensor, kv_b_weight: torch.Tensor, d: MLADims, ctx: ForwardContext,
                    layer_id: int, scaling: float) -> torch.Tensor:
        pool = ctx.kv_pool
        pool.store_latent(layer_id, ctx.out_cache_loc, torch.cat([latent, k_pe], dim=-1))
        cache = pool.latent(layer_id)
        w_uk, w_uv = _split_kv_b(kv_b_weight, d)
        out = q_nope.new_empty(q_nope.shape[0], d.num_heads, d.v_head_dim)
        absorbed = [i for i, n in enumerate(ctx.extend_lens_cpu) if n == 1 or self.absorb_extend]
        if absorbed:
            q_lat = torch.einsum("thn,hnr->thr", q_nope, w_uk.to(q_nope.dtype))
            q_abs = torch.cat([q_lat, q_pe], dim=-1)
        start = 0
        for i, (prefix_len, num_new) in enumerate(zip(ctx.prefix_lens_cpu, ctx.extend_lens_cpu)):
            rows = slice(start, start + num_new)
            start += num_new
            slots = ctx.req_to_token[ctx.req_pool_indices[i], :prefix_len + num_new].long()
            seq = cache.index_select(0, slots)  # [S, R + r]
            tree = dense_tree_mask(ctx, i, rows.start)
            if i in absorbed:
                o_lat = _attend(q_abs[rows].transpose(0, 1), seq[None], seq[None, :, :d.kv_lora_rank],
                                prefix_len, scaling, tree)  # [H, E, R]
                out[rows] = torch.einsum("her,hvr->ehv", o_lat, w_uv.to(o_lat.dtype)).to(out.dtype)
            else:
                kv = linear(seq[:, :d.kv_lora_rank].to(kv_b_weight.dtype), kv_b_weight)
                k_nope, values = kv.view(-1, d.num_heads, d.qk_nope_head_dim + d.v_head_dim).split(
                    [d.qk_nope_head_dim, d.v_head_dim], dim=-1)
                k_rope = seq[:, None, d.kv_lora_rank:].to(k_nope.dtype).expand(-1, d.num_heads, -1)
                keys = torch.cat([k_nope, k_rope], dim=-1).transpose(0, 1)  # [H, S, Dqk]
                queries = torch.cat([q_nope[rows], q_pe[rows]], dim=-1).transpose(0, 1)
                result = _attend(queries, keys, values.transpose(0, 1), prefix_len, scaling, tree)
                out[rows] = result.transpose(0, 1).to(out.dtype)
        return out


def mla_attention(q_nope: torch.Tensor, q_pe: torch.Tensor, latent: torch.Tensor, k_pe: torch.Tensor,
                  kv_b_weight: torch.Tensor, d: MLADims, ctx: ForwardContext, layer_id: int,
                  scaling: float) -> torch.Tensor:
    """q_nope [T, H, nope], q_pe [T, H, rope] (rotated), latent [T, R] (normed), k_pe [T, rope]
    (rotated) -> the attention output [T, H, v_head_dim]."""
    backend = ctx.attn_backend
    if isinstance(backend, MLABackend):
        return backend.forward_mla(q_nope, q_pe, latent, k_pe, kv_b_weight, d, ctx, layer_id, scaling)
    num_tokens = q_nope.shape[0]
    kv = linear(latent, kv_b_weight).view(num_tokens, d.num_heads, d.qk_nope_head_dim + d.v_head_dim)
    k_nope, v = kv.split([d.qk_nope_head_dim, d.v_head_dim], dim=-1)
    k = torch.cat([k_nope, k_pe[:, None, :].expand(-1, d.num_heads, -1)], dim=-1)
    q = torch.cat([q_nope, q_pe], dim=-1)
    # the ordinary pool and kernels hold one head size: v is padded to the key's
    v = F.pad(v, (0, d.qk_head_dim - d.v_head_dim)) if d.v_head_dim < d.qk_head_dim else v
    out = attention(q.contiguous(), k.contiguous(), v.contiguous(), ctx, layer_id, scaling)
    return out[..., :d.v_head_dim]
