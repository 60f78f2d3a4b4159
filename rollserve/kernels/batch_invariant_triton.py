"""A Triton matmul with one fixed tile configuration and no split-K, for batch-invariant
mode (batch_invariant.py): y = x @ w.T, x [M, K], w [N, K].

Each program owns a BLOCK_M x BLOCK_N tile of y and walks K from 0 in BLOCK_K steps,
accumulating in fp32; the configuration is the same for every M (no autotuning by shape),
so an output element is summed in the same order whichever rows share its tile. The cost
against cuBLAS is what bench/deterministic.py measures on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32  # fixed: changing them changes the bits, not the batch


@triton.jit
def _matmul_kernel(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                   stride_ym, stride_yn, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ks = k0 + rk
        a = tl.load(x_ptr + rm[:, None] * stride_xm + ks[None, :] * stride_xk,
                    mask=(rm[:, None] < M) & (ks[None, :] < K), other=0.0)
        b = tl.load(w_ptr + rn[None, :] * stride_wn + ks[:, None] * stride_wk,
                    mask=(rn[None, :] < N) & (ks[:, None] < K), other=0.0)
        acc += tl.dot(a, b)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :] * stride_yn,
             acc.to(y_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def matmul_fixed_tiles(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight[N, K].T in x's dtype, every M with the same tiles."""
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
    _matmul_kernel[grid](x, weight, y, m, n, k, x.stride(0), x.stride(1), weight.stride(0),
                         weight.stride(1), y.stride(0), y.stride(1),
                         BM=BLOCK_M, BN=BLOCK_N, BK=BLOCK_K)
    return y
