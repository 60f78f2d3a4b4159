"""Small-batch GEMV for decode: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M <= 8.

At batch sizes this small a linear layer only streams its weight, so the kernel is
laid out for bandwidth: each program owns BLOCK_N output rows, walks its [BLOCK_N, K]
weight slab with wide loads along K (W is row-major, nn.Linear's layout), and keeps a
[M_PAD, BLOCK_N, BLOCK_K] float32 tile of partial products that it reduces over K once,
at the end. The grid is sized to give every SM at least two programs.

Two fusions remove the small kernels around a decoder layer's GEMVs:
* an RMSNorm prologue (with the residual add): every program reads the whole input row
  anyway, so it accumulates the sum of squares beside the dot products and scales its
  finished outputs by 1/rms, which is one scalar per row (no per-tile recompute);
* a SiLU-and-mul epilogue: a program computes the same rows of the gate and up
  projections and writes silu(gate) * up.
The first weight tile is requested before the kernel waits on the previous one (PDL,
see dispatch.py).

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

from rollserve.kernels.dispatch import interpreting, next_power_of_2, pdl_launch, use_pdl
from rollserve.kernels.pdl_triton import launch_dependents, wait_prior

MAX_M = 8


@dataclass(frozen=True)
class GemvConfig:
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


# Measured overrides, keyed by (M_PAD, N, K, silu_mul, norm); the heuristic serves the rest.
TUNED: Dict[Tuple[int, int, int, bool, bool], GemvConfig] = {}


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
def _load_w(w_ptr, w_rows, stride_wn, k, K, EVEN_K: tl.constexpr):
    if EVEN_K:
        return tl.load(w_ptr + w_rows * stride_wn + k)
    else:
        return tl.load(w_ptr + w_rows * stride_wn + k, mask=k < K, other=0.0)


@triton.jit
def _accumulate(k0, w, w_up, acc, acc_up, sumsq, x_rows, res_rows, res_out_rows, norm_w_ptr,
                m_mask, w_rows, cols, first_row, K, dtype: tl.constexpr,
                BF16_BY_BITS: tl.constexpr, NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                SILU: tl.constexpr):
    """One BLOCK_K step: the input tile (with the residual added and the norm weight applied
    when NORM) times the weight tile(s), into the float32 accumulators."""
    k = k0 + cols
    kn = k + 0 * w_rows  # [1, BLOCK_N, BLOCK_K]
    in_k = m_mask & (kn < K)
    xk = tl.load(x_rows + kn, mask=in_k, other=0.0).to(tl.float32)
    if NORM:
        if HAS_RESIDUAL:  # the stream x + residual, rounded as the unfused add rounds it
            xk = _round(xk + tl.load(res_rows + kn, mask=in_k, other=0.0).to(tl.float32), dtype,
                        BF16_BY_BITS)
            tl.store(res_out_rows + kn, xk.to(dtype), mask=in_k & first_row)
        sumsq += xk * xk
        xk = xk * tl.load(norm_w_ptr + kn, mask=kn < K, other=0.0).to(tl.float32)
    acc += xk * w.to(tl.float32)
    if SILU:
        acc_up += xk * w_up.to(tl.float32)
    return acc, acc_up, sumsq


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, bias_ptr, y_ptr, res_ptr, res_out_ptr, norm_w_ptr, eps,
                 M, N, K, stride_xm, stride_wn,
                 HAS_BIAS: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, BF16_BY_BITS: tl.constexpr,
                 NORM: tl.constexpr, HAS_RESIDUAL: tl.constexpr, SILU: tl.constexpr,
                 USE_PDL: tl.constexpr):
    """y = x @ W^T for N output columns. NORM: x is first replaced by rms_norm(x [+ residual])
    (the row's 1/rms is a scalar, so it scales the finished dot products; program 0 writes
    the new residual). SILU: W holds [gate; up] (2N rows) and y = silu(gate) * up."""
    pid = tl.program_id(0)
    launch_dependents(USE_PDL)
    dtype = y_ptr.dtype.element_ty
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    # the last program re-reads valid rows instead of masking its loads; its store is masked
    w_rows = tl.minimum(rows, N - 1).to(tl.int64)[None, :, None]
    # every tensor is [M_PAD, BLOCK_N or 1, BLOCK_K], so all take the weight load's wide layout
    m = tl.arange(0, M_PAD)[:, None, None]
    m_mask = m < M
    cols = tl.arange(0, BLOCK_K)[None, None, :]
    x_rows = x_ptr + m.to(tl.int64) * stride_xm
    res_rows = res_ptr + m.to(tl.int64) * K
    res_out_rows = res_out_ptr + m.to(tl.int64) * K
    first_row = rows[None, :, None] == 0  # output row 0's program writes the new residual

    # Activations are loaded through pointers broadcast over BLOCK_N, so they take the weight
    # load's layout (no shared-memory shuffle per step; the repeats hit L1).
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
    acc_up = acc  # used only with SILU
    sumsq = acc  # used only with NORM
    # The first weight tile is requested before waiting for the previous kernel (weights are
    # never written during a forward): its latency overlaps that kernel's tail.
    w = _load_w(w_ptr, w_rows, stride_wn, cols, K, EVEN_K)
    w_up = w
    if SILU:
        w_up = _load_w(w_ptr, w_rows + N, stride_wn, cols, K, EVEN_K)
    wait_prior(USE_PDL)
    acc, acc_up, sumsq = _accumulate(0, w, w_up, acc, acc_up, sumsq, x_rows, res_rows,
                                     res_out_rows, norm_w_ptr, m_mask, w_rows, cols, first_row, K,
                                     dtype, BF16_BY_BITS, NORM, HAS_RESIDUAL, SILU)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        w = _load_w(w_ptr, w_rows, stride_wn, k0 + cols, K, EVEN_K)
        if SILU:
            w_up = _load_w(w_ptr, w_rows + N, stride_wn, k0 + cols, K, EVEN_K)
        acc, acc_up, sumsq = _accumulate(k0, w, w_up, acc, acc_up, sumsq, x_rows, res_rows,
                                         res_out_rows, norm_w_ptr, m_mask, w_rows, cols, first_row,
                                         K, dtype, BF16_BY_BITS, NORM, HAS_RESIDUAL, SILU)

    y = tl.sum(acc, axis=2, keep_dims=True)  # [M_PAD, BLOCK_N, 1]
    if NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(sumsq, axis=2, keep_dims=True) / K + eps)
        y = y * rstd
    if HAS_BIAS:
        y += tl.load(bias_ptr + w_rows).to(tl.float32)
    if SILU:
        y_up = tl.sum(acc_up, axis=2, keep_dims=True)
        if NORM:
            y_up = y_up * rstd
        if HAS_BIAS:
            y_up += tl.load(bias_ptr + w_rows + N).to(tl.float32)
        gate = _round(y, dtype, BF16_BY_BITS)  # each half rounded, as the unfused matmul does
        silu = _round(gate / (1.0 + tl.exp(-gate)), dtype, BF16_BY_BITS)
        y = silu * _round(y_up, dtype, BF16_BY_BITS)
    y = _round(y, dtype, BF16_BY_BITS)
    out_mask = m_mask & (rows[None, :, None] < N)
    tl.store(y_ptr + m * N + rows[None, :, None], y.to(dtype), mask=out_mask)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # the interpreter: plan as for an H100


def pick_config(m_pad: int, n: int, k: int, num_sms: int = 132, silu_mul: bool = False,
                norm: bool = False) -> GemvConfig:
    """TUNED's entry for the shape, else the heuristic. With silu_mul, n is the output width
    and each program streams two weight tiles (gate and up rows) per step; norm: the
    RMSNorm prologue is fused in."""
    return TUNED.get((m_pad, n, k, silu_mul, norm)) or _heuristic_config(m_pad, n, k, num_sms,
                                                                         silu_mul or norm)


@functools.lru_cache(maxsize=None)
def _heuristic_config(m_pad: int, n: int, k: int, num_sms: int, fused: bool) -> GemvConfig:
    """One row (the engine's case): two output rows per program, long K tiles and a 4-deep
    load pipeline, from `python -m rollserve.bench.gemv --sweep` on an H100 (2026-11-26: within
    6% of each Llama-3.2-1B / 3.1-8B linear's best of 40 configs; the previous heuristic, below,
    was up to 1.9x slower). Several rows: the per-thread accumulators (m_pad * tile / threads
    floats) stay near 32-64 registers and BLOCK_N is the largest (up to 8) that still gives
    >= 2 programs per SM."""
    if m_pad == 1:
        block_k = 1024 if fused or k <= 2048 else 2048
        num_warps = 4 if fused or k <= 2048 else 8
        return GemvConfig(block_n=2, block_k=max(64, min(block_k, next_power_of_2(k))),
                          num_warps=num_warps, num_stages=4)
    num_warps = 4
    per_thread = max(8, min(32, 64 // m_pad))  # weight elements per thread per step
    if fused:
        per_thread = max(8, per_thread // 2)
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


@dataclass(frozen=True)
class NormPrologue:
    """rms_norm(x [+ residual]) applied to the GEMV's input inside the kernel."""
    weight: torch.Tensor
    eps: float
    residual: Optional[torch.Tensor] = None


def _check_prologue(norm: NormPrologue, x2: torch.Tensor, k: int):
    if norm.weight.shape != (k,) or norm.weight.dtype != x2.dtype:
        raise ValueError(f"norm.weight: expected [{k}] {x2.dtype}, got "
                         f"{list(norm.weight.shape)} {norm.weight.dtype}")
    res = norm.residual
    if res is not None and (res.shape[-1] != k or res.numel() != x2.numel() or res.dtype != x2.dtype):
        raise ValueError(f"norm.residual: expected {list(x2.shape)} {x2.dtype}, "
                         f"got {list(res.shape)} {res.dtype}")


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
         config: Optional[GemvConfig] = None, norm: Optional[NormPrologue] = None,
         silu_mul: bool = False):
    """F.linear(x, weight, bias) for x with at most MAX_M rows ([..., K]).

    norm: the input is rms_norm(x [+ norm.residual]) instead; with a residual the call returns
    (y, x + residual) like rms_norm, the sum in a new tensor. silu_mul: weight stacks the gate
    and up projections ([2N, K]) and y = silu(gate) * up ([..., N])."""
    x2 = _rows(x)
    k, m = x.shape[-1], x2.shape[0]
    _check(x2, weight, k, bias)
    if norm is not None:
        _check_prologue(norm, x2, k)
    if silu_mul and weight.shape[0] % 2:
        raise ValueError(f"weight: silu_mul needs an even row count, got {weight.shape[0]}")
    n = weight.shape[0] // 2 if silu_mul else weight.shape[0]
    if weight.stride(1) != 1:
        weight = weight.contiguous()
    residual = None if norm is None or norm.residual is None else _rows(norm.residual)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    new_residual = torch.empty_like(x2) if residual is not None else None
    if m and n:
        m_pad = next_power_of_2(m)
        cfg = config or pick_config(m_pad, n, k, _num_sms(x.device), silu_mul, norm is not None)
        pdl = use_pdl(x2)
        _gemv_kernel[(triton.cdiv(n, cfg.block_n),)](
            x2, weight, bias if bias is not None else y, y,
            residual if residual is not None else x2,
            new_residual if new_residual is not None else y,
            norm.weight if norm is not None else x2, norm.eps if norm is not None else 0.0,
            m, n, k, x2.stride(0), weight.stride(0),
            HAS_BIAS=bias is not None, M_PAD=m_pad, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
            EVEN_K=k % cfg.block_k == 0, BF16_BY_BITS=interpreting(), NORM=norm is not None,
            HAS_RESIDUAL=residual is not None, SILU=silu_mul, USE_PDL=pdl,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_launch(pdl))
    y = y.view(*x.shape[:-1], n)
    if new_residual is not None:
        return y, new_residual.view(x.shape)
    return y
