"""Tree-masked extend attention over the KV pool: the forwards of speculative tree drafts (the
target's verify, the draft's tree steps), which the plain extend kernel cannot mask.

Request b brings E new tokens (packed rows extend_start_loc[b]...) and has S = prefix + E keys
in its slots (req_to_token). With tree_lens[b] = M >= 0, its last M keys follow its [E, M] bool
mask (row-major at masks[mask_offsets[b]:]) and the S - M keys before them (committed KV) are
visible to every new token; with M = -1 (no tree) the request is causal by index, as in
extend_attention_triton. A sliding window W keeps the committed keys at index > the query's
position - W (positions[]: tree nodes sit at kv_len + depth, not at their row); tree keys
follow the mask alone. The same rule as executor/attention/tree_mask.py, whose torch path
(attention_torch) is the reference this kernel is tested against.

One program serves BLOCK_M (new token, query head) rows of one KV head, the GROUP query heads of
a token being adjacent rows: each K/V tile is read once per group, and a tree of 8 nodes with 4
query heads per KV head fills one 32-row tile. Programs are (row block, KV head, split): the
keys are cut into `num_splits` ranges (split-K, as the decode kernel), so a batch of one long
request still fills the GPU; each split writes its partial output and log-sum-exp, and a second
kernel merges them. With one split the output is written directly. Each split walks its
committed keys (no mask to read) and then its tree keys (mask bits read per tile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import dot_precision, next_power_of_2
from rollserve.kernels.extend_attention_triton import attend_tile

MAX_SPLITS = 16
MIN_SPLIT_KEYS = 256  # a split shorter than this costs more in merging than it saves
NO_WINDOW = 1 << 30  # the window the kernel is given without one: every key is inside it


# Index tensors are views into packed blocks at batch-dependent offsets: their alignment must
# not pick a compiled variant (see extend_attention_triton).
@triton.jit(do_not_specialize_on_alignment=[
    "req_pool_indices", "prefix_lens", "extend_lens", "extend_start_loc", "positions",
    "tree_lens", "mask_offsets", "masks", "block_req", "block_start"])
def _tree_kernel(q_ptr, out_ptr, part_out, part_lse, k_cache, v_cache, req_to_token,
                 req_pool_indices, prefix_lens, extend_lens, extend_start_loc, positions,
                 tree_lens, mask_offsets, masks, block_req, block_start,
                 stride_qt, stride_qh, stride_ot, stride_oh, stride_kt, stride_kh, stride_vt,
                 stride_vh, stride_req, stride_ps, num_q_heads, scale, window,
                 GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SPLIT: tl.constexpr,
                 DOT_PRECISION: tl.constexpr):
    blk = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    b = tl.load(block_req + blk)
    r0 = tl.load(block_start + blk)
    prefix = tl.load(prefix_lens + b).to(tl.int32)
    extend = tl.load(extend_lens + b).to(tl.int32)
    first_row = tl.load(extend_start_loc + b).to(tl.int64)
    row = tl.load(req_pool_indices + b).to(tl.int64)
    tree = tl.load(tree_lens + b)
    seq = prefix + extend

    r = r0 + tl.arange(0, BLOCK_M)
    tok = r // GROUP
    head = kv_head * GROUP + r % GROUP
    mask_m = tok < extend
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    scale = tl.cast(scale, tl.float32)  # a float64 scalar when launched from torch.compile'd code
    q = tl.load(q_ptr + (first_row + tok)[:, None] * stride_qt + head[:, None] * stride_qh
                + d[None, :], mask=mask_m[:, None] & mask_d[None, :], other=0.0)

    # scalars by arithmetic, not tl.where (which gives the interpreter 1-element arrays)
    is_tree = (tree >= 0).to(tl.int32)
    committed = seq - tl.maximum(tree, 0)  # keys [0, committed) are ordinary keys
    pos = tl.load(positions + first_row + tok, mask=mask_m, other=0).to(tl.int32)
    # among ordinary keys a row sees those at index <= limit (all committed ones in a tree)
    # and those at index > qpos - window (no window: window is 2^30)
    limit = tl.where(is_tree != 0, committed - 1, prefix + tok)
    qpos = tl.where(is_tree != 0, pos, prefix + tok)
    last_tok = tl.minimum((r0 + BLOCK_M - 1) // GROUP, extend - 1)
    hi = tl.maximum(prefix + last_tok + 1, seq * is_tree)  # a tree's rows may see every key
    first_pos = tl.min(tl.where(mask_m, qpos, seq), axis=0)
    lo = tl.minimum(tl.maximum(first_pos - window + 1, 0), committed)
    split_len = tl.maximum(tl.cdiv(tl.cdiv(hi - lo, num_splits), BLOCK_N), 1) * BLOCK_N
    s_lo = lo + split * split_len
    s_hi = tl.minimum(hi, s_lo + split_len)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    plain_hi = tl.minimum(s_hi, committed)
    for start in range(s_lo, plain_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask_n = n < plain_hi
        visible = mask_n[None, :] & (n[None, :] <= limit[:, None]) & (
            n[None, :] > qpos[:, None] - window)
        acc, m, denom = attend_tile(q, acc, m, denom, k_cache, v_cache, req_to_token, row,
                                    kv_head, n, mask_n, visible, stride_kt, stride_kh, stride_vt,
                                    stride_vh, stride_req, scale, HEAD_DIM, BLOCK_D, DOT_PRECISION)
    mask_row = tl.load(mask_offsets + b) + tok.to(tl.int64) * tree
    for start in range(tl.maximum(s_lo, committed), s_hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask_n = n < s_hi
        in_range = mask_m[:, None] & mask_n[None, :]
        bits = tl.load(masks + mask_row[:, None] + (n - committed)[None, :], mask=in_range, other=0)
        visible = in_range & (bits != 0)
        acc, m, denom = attend_tile(q, acc, m, denom, k_cache, v_cache, req_to_token, row,
                                    kv_head, n, mask_n, visible, stride_kt, stride_kh, stride_vt,
                                    stride_vh, stride_req, scale, HEAD_DIM, BLOCK_D, DOT_PRECISION)

    filled = denom > 0
    safe = tl.where(filled, denom, 1.0)
    out = acc / safe[:, None]
    io_mask = mask_m[:, None] & mask_d[None, :]
    if SPLIT:
        # partials [split, token, q head, D] and lse [split, token, q head]
        flat = (first_row + tok) * num_q_heads + head
        tl.store(part_out + split * stride_ps + flat[:, None] * HEAD_DIM + d[None, :], out,
                 mask=io_mask)
        lse = tl.where(filled, m + tl.log(safe), float("-inf"))
        tl.store(part_lse + split * (stride_ps // HEAD_DIM) + flat, lse, mask=mask_m)
    else:
        tl.store(out_ptr + (first_row + tok)[:, None] * stride_ot + head[:, None] * stride_oh
                 + d[None, :], out.to(out_ptr.dtype.element_ty), mask=io_mask)


@triton.jit
def _merge_kernel(part_out, part_lse, out_ptr, stride_ps, stride_ot, stride_oh, num_q_heads,
                  NUM_SPLITS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    """One (token, query head): the splits' partial outputs weighted by exp(lse - max lse)."""
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    flat = t * num_q_heads + h
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    mask_s = s < NUM_SPLITS
    mask_d = d < HEAD_DIM
    lse = tl.load(part_lse + s * (stride_ps // HEAD_DIM) + flat, mask=mask_s, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.exp(lse - tl.where(top == float("-inf"), 0.0, top))
    parts = tl.load(part_out + s[:, None] * stride_ps + flat * HEAD_DIM + d[None, :],
                    mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    total = tl.sum(weight, axis=0)
    out = tl.sum(parts * weight[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + t * stride_ot + h * stride_oh + d, out.to(out_ptr.dtype.element_ty),
             mask=mask_d)


@dataclass
class PackedTrees:
    """A forward's tree masks as the kernel reads them (device tensors): tree_lens [B] int32
    (M, or -1 for a request without a tree), mask_offsets [B] int64 into masks, the masks
    flattened row-major as uint8."""
    tree_lens: torch.Tensor
    mask_offsets: torch.Tensor
    masks: torch.Tensor


def pack_tree_masks(tree_masks: List[Optional[torch.Tensor]], extend_lens: List[int],
                    device: torch.device) -> Tuple[List[int], List[int], torch.Tensor]:
    """(tree_lens, mask_offsets) as host lists and the flat uint8 masks on `device`; each mask
    must be [extend_lens[i], M] with M >= extend_lens[i] (ValueError naming it otherwise)."""
    lens, offsets, flat, offset = [], [], [], 0
    for i, (m, n) in enumerate(zip(tree_masks, extend_lens)):
        if m is None:
            lens.append(-1)
            offsets.append(0)
            continue
        if m.dim() != 2 or m.shape[0] != n or m.shape[1] < n:
            raise ValueError(f"tree_masks[{i}]: must be [extend_len={n}, M >= {n}], "
                             f"got {list(m.shape)}")
        lens.append(int(m.shape[1]))
        offsets.append(offset)
        offset += m.numel()
        flat.append(m.reshape(-1))
    if not flat:
        return lens, offsets, torch.zeros(1, dtype=torch.uint8, device=device)
    return lens, offsets, torch.cat(flat).to(device=device, dtype=torch.uint8)


def tree_block_m(extend_lens: List[int], group: int) -> int:
    """Rows per program: the fewest (16..64, a power of two) that hold the longest request's
    (token, head) rows, so a small tree does not idle most of a 64-row tile."""
    return min(64, max(16, next_power_of_2(max(extend_lens, default=1) * group)))


def tree_row_blocks(extend_lens: List[int], group: int, block_m: int) -> Tuple[List[int], List[int]]:
    """(request index, first (token, head) row) of every block of block_m rows."""
    reqs, starts = [], []
    for i, n in enumerate(extend_lens):
        for start in range(0, n * group, block_m):
            reqs.append(i)
            starts.append(start)
    return reqs, starts


def tree_num_splits(num_blocks: int, num_kv_heads: int, max_seq_len: int, num_sms: int) -> int:
    """Key ranges per (row block, KV head): enough programs for about two waves of the SMs,
    each range at least MIN_SPLIT_KEYS long."""
    wanted = -(-2 * num_sms // max(1, num_blocks * num_kv_heads))
    return max(1, min(MAX_SPLITS, wanted, -(-max_seq_len // MIN_SPLIT_KEYS)))


def tree_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                          prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
                          extend_start_loc: torch.Tensor, positions: torch.Tensor,
                          trees: PackedTrees, block_req: torch.Tensor, block_start: torch.Tensor,
                          block_m: int, scale: float, num_splits: int = 1,
                          sliding_window: Optional[int] = None,
                          out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q [T, Hq, D] packed new tokens -> [T, Hq, D]. block_req/block_start from
    tree_row_blocks(extend_lens, Hq // Hkv, block_m)."""
    num_tokens, num_q_heads, head_dim = q.shape
    group = num_q_heads // k_cache.shape[1]
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits: must be in 1..{MAX_SPLITS}, got {num_splits}")
    if out is None:
        out = torch.empty_like(q)
    num_blocks = block_req.shape[0]
    if num_blocks == 0:
        return out
    if num_splits > 1:
        part_out = torch.empty(num_splits, num_tokens, num_q_heads, head_dim, dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty(num_splits, num_tokens, num_q_heads, dtype=torch.float32,
                               device=q.device)
    else:
        part_out = part_lse = out  # unused
    block_d = max(16, next_power_of_2(head_dim))
    stride_ps = num_tokens * num_q_heads * head_dim
    _tree_kernel[(num_blocks, k_cache.shape[1], num_splits)](
        q, out, part_out, part_lse, k_cache, v_cache, req_to_token, req_pool_indices,
        prefix_lens, extend_lens, extend_start_loc, positions, trees.tree_lens, trees.mask_offsets,
        trees.masks, block_req, block_start, q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        req_to_token.stride(0), stride_ps, num_q_heads, scale, sliding_window or NO_WINDOW,
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=64 if head_dim <= 64 else 32,
        BLOCK_D=block_d, SPLIT=num_splits > 1, DOT_PRECISION=dot_precision(q.dtype),
        num_warps=4, num_stages=2)
    if num_splits > 1:
        _merge_kernel[(num_tokens, num_q_heads)](
            part_out, part_lse, out, stride_ps, out.stride(0), out.stride(1), num_q_heads,
            NUM_SPLITS=num_splits, HEAD_DIM=head_dim, BLOCK_S=max(2, next_power_of_2(num_splits)),
            BLOCK_D=block_d, num_warps=1)
    return out
