"""The fused MoE expert GEMMs in Triton (CUDA; the torch reference is moe.py).

Token copies (token t's k-th choice is copy t * top_k + k) are sorted by expert and each
expert's group padded to a multiple of BLOCK_M with a sentinel (`moe_align`), so every block
of BLOCK_M rows belongs to one expert and one launch covers all experts:
1. gate|up: each program multiplies its block's token rows by one BLOCK_N slice of the
   expert's gate rows and the matching up rows, and stores silu(gate) * up ([copies, I]).
2. down: the block's activation rows times the expert's down weight, scaled by each copy's
   top-k weight ([copies, H]); the top-k copies of a token are then summed.
The padded length is bounded without reading the counts on the host (no sync). Block
sizes come from `moe_config` (a heuristic by token count; per-shape tuning on the GPU is to do).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rollserve.kernels.moe_align import moe_align


def moe_config(num_tokens: int) -> dict:
    """Block sizes: small M tiles at decode (few copies per expert), larger for prefill."""
    if num_tokens <= 32:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, num_warps=4)
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4)


@triton.jit
def _gate_up_silu_kernel(x_ptr, w_ptr, out_ptr, sorted_ptr, block_expert_ptr, num_copies, hidden,
                         inter, top_k, stride_x, stride_we, stride_wn, stride_out,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    copies = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = copies < num_copies
    tokens = (copies // top_k).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < inter
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    acc_gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, hidden, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < hidden
        a = tl.load(x_ptr + tokens[:, None] * stride_x + ks[None, :],
                    mask=valid[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & col_ok[None, :]
        gate_w = tl.load(w_base + cols[None, :] * stride_wn + ks[:, None], mask=w_mask, other=0.0)
        up_w = tl.load(w_base + (cols[None, :] + inter) * stride_wn + ks[:, None], mask=w_mask,
                       other=0.0)
        acc_gate += tl.dot(a, gate_w, input_precision=PRECISION)
        acc_up += tl.dot(a, up_w, input_precision=PRECISION)
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up
    tl.store(out_ptr + copies.to(tl.int64)[:, None] * stride_out + cols[None, :],
             act.to(out_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit
def _down_weighted_kernel(a_ptr, w_ptr, out_ptr, weights_ptr, sorted_ptr, block_expert_ptr,
                          num_copies, hidden, inter, stride_a, stride_we, stride_wn, stride_out,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         PRECISION: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    expert = tl.load(block_expert_ptr + pid_m)
    if expert < 0:
        return
    copies = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = copies < num_copies
    rows = copies.to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < hidden
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, inter, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < inter
        a = tl.load(a_ptr + rows[:, None] * stride_a + ks[None, :],
                    mask=valid[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_base + cols[None, :] * stride_wn + ks[:, None],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(a, w, input_precision=PRECISION)
    scale = tl.load(weights_ptr + rows, mask=valid, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :],
             (acc * scale[:, None]).to(out_ptr.dtype.element_ty),
             mask=valid[:, None] & col_ok[None, :])


def fused_moe_triton(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                     dropped: bool = False) -> torch.Tensor:
    """Same contract as moe.fused_moe_torch: x [T, H], w13 [E, 2I, H], w2 [E, H, I]."""
    x, w13, w2 = x.contiguous(), w13.contiguous(), w2.contiguous()
    num_tokens, top_k = topk_ids.shape
    num_experts, inter, hidden = w13.shape[0], w2.shape[2], x.shape[1]
    num_copies = num_tokens * top_k
    if num_copies == 0:
        return torch.zeros_like(x)
    cfg = moe_config(num_tokens)
    # float32 as torch's own matmuls do it: full precision unless TF32 was allowed (tl.dot's
    # default takes float32 inputs as TF32: 1e-2 off transformers' logprobs on an H100).
    # "tf32" is that default, and for 16-bit inputs it changes nothing.
    precision = ("ieee" if x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
                 else "tf32")
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    sorted_ids, block_expert = moe_align(topk_ids, num_experts, bm)
    num_blocks = block_expert.numel()
    act = torch.empty(num_copies, inter, dtype=x.dtype, device=x.device)
    _gate_up_silu_kernel[(num_blocks, triton.cdiv(inter, bn))](
        x, w13, act, sorted_ids, block_expert, num_copies, hidden, inter, top_k,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=precision, num_warps=cfg["num_warps"])
    # copies of another rank's experts are never written: zeros, so they add nothing
    out = (torch.zeros if dropped else torch.empty)(num_copies, hidden, dtype=x.dtype,
                                                     device=x.device)
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    _down_weighted_kernel[(num_blocks, triton.cdiv(hidden, bn))](
        act, w2, out, weights, sorted_ids, block_expert, num_copies, hidden, inter,
        act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, PRECISION=precision, num_warps=cfg["num_warps"])
    return out.view(num_tokens, top_k, hidden).sum(dim=1)
