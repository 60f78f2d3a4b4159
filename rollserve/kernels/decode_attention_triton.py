"""Paged decode attention: one query token per request against its slots in the KV pool.

Grouped-query attention: one program serves all query heads that share a KV head
(padded to 16 rows for tl.dot), so each K/V row is read once per group. The
sequence is split into up to `num_splits` ranges processed by separate programs
(split-K, as flash-decoding), so a batch of one still fills the GPU. The whole
step is one launch: each split that has tokens writes its partial output and
log-sum-exp to a float32 scratch, then counts itself in at a per-(request, KV head)
arrival counter; the last of them to arrive merges the partials and resets the
counter. A sequence that needs one split only is written out directly (no scratch,
no counter), and splits past the sequence's end do nothing, so a split count larger
than short sequences need costs only empty programs. Nothing here reads host data,
so the launch can be captured in a CUDA graph.

The tile and launch shape (`DecodeConfig`) comes from `decode_config`, a heuristic of
the batch and head shapes; `rollserve.bench.decode_attention` sweeps the alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import dot_precision, next_power_of_2, pdl_launch, use_pdl
from rollserve.kernels.pdl_triton import launch_dependents, wait_prior

MAX_SPLITS = 32  # the most the kernel takes
SPLIT_CAP = 16  # the most decode_num_splits picks
MIN_COUNTERS = 4096  # the first counter buffer's entries (16 KiB), so it rarely has to grow


@dataclass(frozen=True)
class DecodeConfig:
    """block_n: tokens per step of a program's sequence loop (a power of two, >= 16 for
    tl.dot); num_warps and num_stages: Triton's launch options (num_stages pipelines the
    loop's loads)."""
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def check(self) -> None:
        """ValueError naming the field when the kernel cannot run this config."""
        if self.block_n < 16 or self.block_n & (self.block_n - 1):
            raise ValueError(f"config.block_n: must be a power of two >= 16, got {self.block_n}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"config.num_warps: must be 1, 2, 4, 8 or 16, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"config.num_stages: must be >= 1, got {self.num_stages}")


def decode_config(batch_size: int, head_dim: int) -> DecodeConfig:
    """The config a launch uses unless given one, from `python -m rollserve.bench.decode_attention`
    on an H100 (2026-11-26): 128-token tiles won at every batch for head dims 64 and 128
    (1.04-1.43x over 64), a 3-deep pipeline from batch 64 up. Head dims above 128 keep 32-token
    tiles (not measured)."""
    return DecodeConfig(block_n=128 if head_dim <= 128 else 32, num_warps=4,
                        num_stages=3 if batch_size >= 64 else 2)


@triton.jit
def _split_len(length, num_splits, BLOCK_N: tl.constexpr):
    """Tokens per split: the range divided evenly, rounded up to whole BLOCK_N tiles, so a
    short sequence uses fewer, fuller splits and the surplus programs find an empty range."""
    tiles = tl.cdiv(tl.cdiv(length, num_splits), BLOCK_N)
    return tl.maximum(tiles, 1) * BLOCK_N


@triton.jit
def _attend_range(q, k_cache, v_cache, req_to_token, row, kv_head, lo, hi, stride_kt, stride_kh,
                  stride_vt, stride_vh, stride_req, scale, HEAD_DIM: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                  DOT_PRECISION: tl.constexpr):
    """Online softmax of the group's queries over tokens [lo, hi): (normalized output, lse)."""
    d = tl.arange(0, BLOCK_D)
    mask_d = d < HEAD_DIM
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        mask_n = n < hi
        slots = tl.load(req_to_token + row * stride_req + n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        # both tiles issued before the first dot, so their reads are in flight together
        k = tl.load(k_cache + slots[:, None] * stride_kt + kv_head * stride_kh + d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(v_cache + slots[:, None] * stride_vt + kv_head * stride_vh + d[None, :],
                    mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        p = tl.exp(s - m_new[:, None])
        alpha = tl.exp(m - m_new)
        denom = denom * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m = m_new
    filled = denom > 0
    safe = tl.where(filled, denom, 1.0)
    lse = tl.where(filled, m + tl.log(safe), float("-inf"))
    return acc / safe[:, None], lse


@triton.jit
def _merge_splits(part_out, part_lse, base, active, mask_h, HEAD_DIM: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    """The group's `active` partials (each split has tokens, so a finite lse), weighted by
    exp(lse - running max lse). The loads bypass L1 (.cg): other programs wrote them."""
    d = tl.arange(0, BLOCK_D)
    mask_hd = mask_h[:, None] & (d < HEAD_DIM)[None, :]
    top = tl.full([BLOCK_H], float("-inf"), tl.float32)
    weight_sum = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
    for s in range(0, active):
        lse = tl.load(part_lse + base + s, mask=mask_h, other=0.0, cache_modifier=".cg")
        partial = tl.load(part_out + (base + s)[:, None] * HEAD_DIM + d[None, :], mask=mask_hd,
                          other=0.0, cache_modifier=".cg")
        top_new = tl.maximum(top, lse)
        alpha = tl.exp(top - top_new)
        weight = tl.exp(lse - top_new)
        acc = acc * alpha[:, None] + partial * weight[:, None]
        weight_sum = weight_sum * alpha + weight
        top = top_new
    return acc / weight_sum[:, None]


# one compiled kernel for every split count, and whatever offset the index views start at
@triton.jit(do_not_specialize=["num_splits"],
            do_not_specialize_on_alignment=["req_pool_indices", "seq_lens"])
def _decode_kernel(q_ptr, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, out_ptr,
                   part_out, part_lse, arrivals, stride_qt, stride_qh, stride_kt, stride_kh,
                   stride_vt, stride_vh, stride_req, stride_ot, stride_oh, num_splits, scale, window,
                   GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   USE_PDL: tl.constexpr):
    launch_dependents(USE_PDL)
    wait_prior(USE_PDL)  # q, the pool, the lengths and the counters all come from earlier kernels
    b = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    num_kv_heads = tl.num_programs(1)
    num_q_heads = num_kv_heads * GROUP
    seq_len = tl.load(seq_lens + b).to(tl.int32)
    kv_start = tl.where(window > 0, tl.maximum(seq_len - window, 0), 0)
    split_len = _split_len(seq_len - kv_start, num_splits, BLOCK_N)
    active = tl.maximum(tl.cdiv(seq_len - kv_start, split_len), 1)  # splits with tokens
    if split < active:
        row = tl.load(req_pool_indices + b).to(tl.int64)
        lo = kv_start + split * split_len
        hi = tl.minimum(lo + split_len, seq_len)
        h = tl.arange(0, BLOCK_H)
        head = kv_head * GROUP + h
        mask_h = h < GROUP
        d = tl.arange(0, BLOCK_D)
        mask_hd = mask_h[:, None] & (d < HEAD_DIM)[None, :]
        qk_scale = tl.cast(scale, tl.float32)  # float64 when launched from torch.compile'd code
        q = tl.load(q_ptr + b.to(tl.int64) * stride_qt + head[:, None] * stride_qh + d[None, :],
                    mask=mask_hd, other=0.0)
        out, lse = _attend_range(q, k_cache, v_cache, req_to_token, row, kv_head, lo, hi,
                                 stride_kt, stride_kh, stride_vt, stride_vh, stride_req, qk_scale,
                                 HEAD_DIM, BLOCK_H, BLOCK_N, BLOCK_D, DOT_PRECISION)
        out_ptrs = out_ptr + b.to(tl.int64) * stride_ot + head[:, None] * stride_oh + d[None, :]
        if active == 1:
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_hd)
        else:
            base = (b.to(tl.int64) * num_q_heads + head) * num_splits
            tl.store(part_out + (base + split)[:, None] * HEAD_DIM + d[None, :], out, mask=mask_hd)
            tl.store(part_lse + base + split, lse, mask=mask_h)
            # Every thread's stores are issued before the (single-thread) release below;
            # the acquire side is the same atomic in the last program to arrive.
            tl.debug_barrier()
            counter = arrivals + b * num_kv_heads + kv_head
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == active - 1:
                tl.debug_barrier()  # the whole program reads after the acquire, not just its thread
                merged = _merge_splits(part_out, part_lse, base, active, mask_h, HEAD_DIM, BLOCK_H,
                                       BLOCK_D)
                tl.store(out_ptrs, merged.to(out_ptr.dtype.element_ty), mask=mask_hd)
                tl.store(counter, 0)  # all `active` programs have arrived: none touches it again


# One zeroed int32 buffer per device, shared by every layer and every captured graph: safe
# because decode launches on a device run one after another on one stream, and each launch
# leaves its counters at zero. Replaced buffers stay referenced (_RETIRED) since CUDA
# graphs captured earlier still point at them.
_ARRIVALS: dict = {}
_RETIRED: list = []


@torch.compiler.disable  # a cache lookup with a side effect: kept out of traced graphs
def arrival_counters(device: torch.device, needed: int) -> torch.Tensor:
    """The device's arrival counters, at least `needed` of them, all zero between launches."""
    current = _ARRIVALS.get(device)
    if current is not None and current.numel() >= needed:
        return current
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"decode attention needs {needed} arrival counters on {device}: run "
                           "the decode once at this batch size before capturing a CUDA graph")
    if current is not None:
        _RETIRED.append(current)
    _ARRIVALS[device] = torch.zeros(max(MIN_COUNTERS, next_power_of_2(needed)), dtype=torch.int32,
                                    device=device)
    return _ARRIVALS[device]


def decode_num_splits(batch_size: int, num_kv_heads: int, num_sms: int = 132) -> int:
    """About two programs per SM, as a power of two, at most SPLIT_CAP.

    At batch 1 this is the most splits (16 for 8 KV heads), also for short contexts:
    the kernel rounds each split up to whole BLOCK_N tiles (`_split_len`), so at 512
    tokens only 4 of the 16 programs per head attend and the rest exit at once. More
    splits than a short context needs thus cost an empty program each, while fewer would
    lengthen every long context's critical path; the count cannot follow the sequence
    length because CUDA graphs fix it at capture. The cap is measured (bench/decode_attention,
    H100): 16 splits beat 32 at batch 1 and 4096 tokens by 1.1-1.2x and tie at 512."""
    wanted = 2 * num_sms // max(1, batch_size * num_kv_heads)
    return max(1, min(SPLIT_CAP, 1 << max(0, wanted.bit_length() - 1)))


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            req_to_token: torch.Tensor, req_pool_indices: torch.Tensor,
                            seq_lens: torch.Tensor, scale: float, num_splits: int,
                            sliding_window: int | None = None, out: torch.Tensor | None = None,
                            config: DecodeConfig | None = None) -> torch.Tensor:
    """q [B, Hq, D] (the newest token of each request, already in the pool) -> [B, Hq, D].
    `config` overrides `decode_config`'s choice (benchmarks, tests)."""
    batch, num_q_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"num_splits: must be in 1..{MAX_SPLITS}, got {num_splits}")
    group = num_q_heads // num_kv_heads
    if config is None:
        config = decode_config(batch, head_dim)
    config.check()
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    if num_splits > 1:
        part_out = torch.empty(batch, num_q_heads, num_splits, head_dim, dtype=torch.float32,
                               device=q.device)
        part_lse = torch.empty(batch, num_q_heads, num_splits, dtype=torch.float32, device=q.device)
        arrivals = arrival_counters(q.device, batch * num_kv_heads)
    else:  # every sequence is one split, written out directly: the scratch goes unused
        part_out = part_lse = torch.empty(1, dtype=torch.float32, device=q.device)
        arrivals = torch.empty(1, dtype=torch.int32, device=q.device)
    pdl = use_pdl(q)
    _decode_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, out, part_out, part_lse,
        arrivals, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), req_to_token.stride(0), out.stride(0), out.stride(1),
        num_splits, scale, sliding_window or 0, GROUP=group, HEAD_DIM=head_dim,
        BLOCK_H=max(16, next_power_of_2(group)), BLOCK_N=config.block_n,
        BLOCK_D=max(16, next_power_of_2(head_dim)), DOT_PRECISION=dot_precision(q.dtype),
        USE_PDL=pdl, num_warps=config.num_warps, num_stages=config.num_stages, **pdl_launch(pdl))
    return out
