"""Paged attention over the KV pool, for any mix of prefill, chunked prefill and decode.

Request i brings extend_lens[i] new tokens (packed rows extend_start_loc[i]...) and
already has prefix_lens[i] tokens in the pool; its seq_lens[i] slots are listed in
req_to_token[req_pool_indices[i]]. New token j of request i sees the positions
0..prefix_lens[i] + j (and, with a sliding window W, only the last W of them); with
causal=False (encoders such as BERT) every token sees its whole sequence. A request with a
tree mask (speculative tree drafts, attention/tree_mask.py) sees what the mask allows.
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.attention.tree_mask import dense_tree_mask
from rollserve.kernels.rotary import RopeInputs, rope_store_torch


def attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                    layer_id: int, scaling: float, sliding_window: Optional[int] = None,
                    causal: bool = True, rope: Optional[RopeInputs] = None) -> torch.Tensor:
    if not causal and sliding_window is not None:
        raise ValueError("a sliding window needs causal attention")
    if rope is None:
        ctx.kv_pool.store(layer_id, ctx.out_cache_loc, k, v)
    else:
        q = rope_store_torch(q, k, v, rope, ctx.kv_pool, layer_id, ctx.out_cache_loc)
    k_buffer, v_buffer = ctx.kv_pool.kv(layer_id)
    out = torch.empty_like(q)
    # a tree draft's lone token may still have masked keys (earlier tree nodes): the masked path
    plain = ctx.tree_masks or [None] * ctx.batch_size
    single = [i for i, n in enumerate(ctx.extend_lens_cpu) if n == 1 and plain[i] is None]
    multi = [i for i, n in enumerate(ctx.extend_lens_cpu) if n > 1 or plain[i] is not None]
    if single:  # a lone new token is its sequence's last: it sees everything, causal or not
        _single_token_attention(q, k_buffer, v_buffer, ctx, single, scaling, sliding_window, out)
    for i in multi:
        _extend_attention(q, k_buffer, v_buffer, ctx, i, scaling, sliding_window, out, causal)
    return out


def _gather(buffer: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """buffer rows at slots (any shape), [*slots.shape, H, D]; index_select beats buffer[slots] on CPU."""
    return buffer.index_select(0, slots.reshape(-1)).view(*slots.shape, *buffer.shape[1:])


def _visible_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, seq_lens: torch.Tensor,
                  sliding_window: Optional[int]) -> torch.Tensor:
    """[B, Q, K] bool: key at key_pos is in its sequence, not in the future, inside the window.

    query_pos [B, Q], key_pos [K], seq_lens [B].
    """
    keys, queries = key_pos[None, None, :], query_pos[:, :, None]
    visible = (keys < seq_lens[:, None, None]) & (keys <= queries)
    if sliding_window is not None:
        visible &= keys > queries - sliding_window
    return visible


def _single_token_attention(q, k_buffer, v_buffer, ctx: ForwardContext, reqs: List[int],
                            scaling: float, sliding_window: Optional[int], out: torch.Tensor) -> None:
    """The decode hot path: one batched SDPA over all requests with one new token.

    Keys are padded to the longest sequence and masked by length. The query heads
    sharing a KV head are laid along SDPA's query axis, so GQA needs no K/V copy.
    """
    subset = None if len(reqs) == ctx.batch_size else torch.tensor(reqs, device=q.device)

    def pick(per_request: torch.Tensor) -> torch.Tensor:
        return per_request if subset is None else per_request.index_select(0, subset)

    rows = pick(ctx.extend_start_loc)
    seq_lens = pick(ctx.seq_lens)
    max_len = max(ctx.prefix_lens_cpu[i] for i in reqs) + 1
    slots = ctx.req_to_token[pick(ctx.req_pool_indices), :max_len].long()  # [B, L]
    num_kv_heads, head_dim = k_buffer.shape[1], k_buffer.shape[2]
    bsz = slots.shape[0]
    keys = _gather(k_buffer, slots).transpose(1, 2)  # [B, Hkv, L, D]
    values = _gather(v_buffer, slots).transpose(1, 2)
    queries = q[rows].view(bsz, num_kv_heads, -1, head_dim).to(keys.dtype)  # [B, Hkv, G, D]
    key_pos = torch.arange(max_len, device=q.device)
    visible = _visible_mask((seq_lens - 1)[:, None], key_pos, seq_lens, sliding_window)
    # An additive float mask runs faster than a boolean one in CPU SDPA.
    mask = torch.zeros(visible.shape, dtype=keys.dtype, device=q.device).masked_fill_(
        ~visible, float("-inf"))
    result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask[:, None],
                                            scale=scaling)
    out[rows] = result.reshape(bsz, -1, head_dim).to(out.dtype)


def _extend_attention(q, k_buffer, v_buffer, ctx: ForwardContext, i: int, scaling: float,
                      sliding_window: Optional[int], out: torch.Tensor, causal: bool = True) -> None:
    """Request i's new tokens against its whole sequence (prefix from the pool + themselves)."""
    prefix_len, extend_len = ctx.prefix_lens_cpu[i], ctx.extend_lens_cpu[i]
    seq_len = prefix_len + extend_len
    start = sum(ctx.extend_lens_cpu[:i])  # == extend_start_loc[i], read from the host list
    slots = ctx.req_to_token[ctx.req_pool_indices[i], :seq_len].long()
    keys = _gather(k_buffer, slots).transpose(0, 1)  # [Hkv, S, D]
    values = _gather(v_buffer, slots).transpose(0, 1)
    queries = q[start:start + extend_len].transpose(0, 1).to(keys.dtype)  # [Hq, E, D]
    tree = dense_tree_mask(ctx, i, start, sliding_window) if causal else None
    if tree is not None:
        mask, causal = tree, False
    elif not causal:
        mask = None  # every new token sees the whole sequence
    elif prefix_len == 0 and sliding_window is None:
        mask, causal = None, True
    else:
        positions = torch.arange(seq_len, device=q.device)
        mask = _visible_mask(positions[None, prefix_len:], positions,
                             torch.tensor([seq_len], device=q.device), sliding_window)[0]
        causal = False
    result = F.scaled_dot_product_attention(queries, keys, values, attn_mask=mask, is_causal=causal,
                                            scale=scaling, enable_gqa=True)
    out[start:start + extend_len] = result.transpose(0, 1).to(out.dtype)


class TorchNativeBackend(AttentionBackend):
    """The torch reference (SDPA over gathered K/V): the CPU path and the ground truth the
    GPU backends are tested against."""

    name = "torch_native"
    supports_tree_mask = True

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        return attention_torch(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
