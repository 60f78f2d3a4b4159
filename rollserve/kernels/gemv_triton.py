"""Small-batch GEMV for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M <= 8.

At batch sizes this small a linear layer only streams its weight, so the kernel is
laid out for bandwidth: each program owns BLOCK_N output rows, walks its [BLOCK_N, K]
weight slab with wide loads along K (W is row-major, nn.Linear's layout), and keeps a
[M_PAD, BLOCK_N, BLOCK_K] float32 tile of partial products that it reduces over K once,
at the end. The grid is sized to give every SM at least two programs.

There is no fused prologue (RMSNorm / SiLU-mul recomputed per program): on an H100 it was
slower than the separate norm or activation kernel followed by this GEMV (docs/gpu.md).

Configs come from a heuristic (`pick_config`), overridable per shape through TUNED; no
autotuning, so a first call inside CUDA-graph capture is safe.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import triton
import triton.language as tl

from rollserve.kernels.dispatch import interpreting, next_power_of_2

MAX_M = 8


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


# Measured overrides, keyed by (M_PAD, N, K); the heuristic serves the rest.
TUNED: Dict[Tuple[int, int, int], GemvConfig] = {}


@triton.jit
def _round(x, dtype: tl.constexpr, BF16_BY_BITS: tl.constexpr):
    """float32 x rounded to dtype (to nearest even), returned as float32. BF16_BY_BITS does the
    bfloat16 rounding on the bits: Triton's interpreter truncates float32 -> bfloat16, the GPU
    rounds to nearest, and the output should round the same way on both."""
    if BF16_BY_BITS and dtype == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype).to(tl.float32)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, M, N, K, stride_xm, stride_wn,
                 HAS_BIAS: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, BF16_BY_BITS: tl.constexpr):
    pid = tl.program_id(0)
    dtype = y_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    # the last program re-reads valid rows instead of masking its loads; its store is masked
    w_rows = tl.minimum(rows, N - 1).to(tl.int64)[None, :, None]
    # every tensor is [M_PAD, BLOCK_N or 1, BLOCK_K], so all take the weight load's wide layout
    m = tl.arange(0, M_PAD)[:, None, None]
    m_mask = m < M
    cols = tl.arange(0, BLOCK_K)[None, None, :]
    x_rows = x_ptr + m.to(tl.int64) * stride_xm

    # Activations are loaded through pointers broadcast over BLOCK_N, so they take the weight
    # load's layout (no shared-memory shuffle per step; the repeats hit L1).
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        if EVEN_K:
            w = tl.load(w_ptr + w_rows * stride_wn + k)
        else:
            w = tl.load(w_ptr + w_rows * stride_wn + k, mask=k < K, other=0.0)
        kn = k + 0 * w_rows  # [1, BLOCK_N, BLOCK_K]
        xk = tl.load(x_rows + kn, mask=m_mask & (kn < K), other=0.0).to(tl.float32)
        acc += xk * w.to(tl.float32)

    y = tl.sum(acc, axis=2, keep_dims=True)  # [M_PAD, BLOCK_N, 1]
    if HAS_BIAS:
        y += tl.load(bias_ptr + w_rows).to(tl.float32)
    y = _round(y, dtype, BF16_BY_BITS)
    out_mask = m_mask & (rows[None, :, None] < N)
    tl.store(y_ptr + m * N + rows[None, :, None], y.to(dtype), mask=out_mask)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: plan as for an H100


def pick_config(m_pad: int, n: int, k: int, num_sms: int = 132) -> GemvConfig:
    """TUNED's entry for the shape, else the heuristic."""
    return TUNED.get((m_pad, n, k)) or _heuristic_config(m_pad, n, k, num_sms)


@functools.lru_cache(maxsize=None)
def _heuristic_config(m_pad: int, n: int, k: int, num_sms: int) -> GemvConfig:
    """The per-thread accumulator (m_pad * tile / threads floats) stays near 32-64 registers;
    BLOCK_N is the largest (up to 8) that still gives >= 2 programs per SM."""
    num_warps = 4
    per_thread = max(8, min(32, 64 // m_pad))  # weight elements per thread per step
    tile = per_thread * 32 * num_warps
    block_n = 8
    while block_n > 1 and triton.cdiv(n, block_n) < 2 * num_sms:
        block_n //= 2
    block_k = max(64, min(tile // block_n, next_power_of_2(k)))
    return GemvConfig(block_n=block_n, block_k=block_k, num_warps=num_warps, num_stages=2)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [M, K] with a contiguous last dim."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])


def _check(x2: torch.Tensor, weight: torch.Tensor, k: int, bias: Optional[torch.Tensor]):
    if x2.shape[0] > MAX_M:
        raise ValueError(f"x: gemv serves at most {MAX_M} rows, got {x2.shape[0]}")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight: expected [N, {k}], got {list(weight.shape)}")
    if weight.dtype != x2.dtype:
        raise ValueError(f"weight: dtype {weight.dtype} differs from the input's {x2.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x2.dtype):
        raise ValueError(f"bias: expected [{weight.shape[0]}] {x2.dtype}, "
                         f"got {list(bias.shape)} {bias.dtype}")


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
         config: Optional[GemvConfig] = None) -> torch.Tensor:
    """F.linear(x, weight, bias) for x with at most MAX_M rows ([..., K])."""
    x2 = _rows(x)
    k, m, n = x.shape[-1], x2.shape[0], weight.shape[0]
    _check(x2, weight, k, bias)
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m and n:
        m_pad = next_power_of_2(m)
        cfg = config or pick_config(m_pad, n, k, _num_sms(x.device))
        _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
            x2, weight, bias if bias is not None else y, y, m, n, k, x2.stride(0), weight.stride(0),
            HAS_BIAS=bias is not None, M_PAD=m_pad, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            EVEN_K=k % cfg.block_k == 0, BF16_BY_BITS=interpreting(),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y.view(*x.shape[:-1], n)
