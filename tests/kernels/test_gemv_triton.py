"""The small-batch Triton GEMV against F.linear, and the dispatch in kernels.linear (GPU;
also runs in Triton's interpreter on CPU tensors when TRITON_INTERPRET=1).

Errors are ||out - ref|| / ||ref||; every output element is checked written (no NaN).
"""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from rollserve.kernels.gemv_triton import GemvConfig, NormPrologue, gemv, pick_config  # noqa: E402
from rollserve.kernels.linear import (MAX_GEMV_M, linear, linear_torch,  # noqa: E402
                                      rmsnorm_linear, use_gemv)
from rollserve.kernels.norm import rms_norm_torch  # noqa: E402
from tests.kernels.checks import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (M, N, K): odd N and K off the block sizes, and M on and off a power of two
SHAPES = [(1, 40, 96), (3, 33, 200), (8, 17, 64), (5, 70, 130), (2, 257, 1000)]
if torch.cuda.is_available():  # real decode shapes only where they run fast
    SHAPES += [(1, 3072, 2048), (4, 2048, 8192), (8, 16384, 2048), (7, 4096, 14336)]


def rand(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype, device=DEV) * scale


def weights(n, k, dtype, bias):
    w = rand(n, k, dtype=dtype, scale=k ** -0.5)
    return w, (rand(n, dtype=dtype) if bias else None)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_gemv(dtype, m, n, k, bias):
    x = rand(m, k, dtype=dtype)
    w, b = weights(n, k, dtype, bias)
    out = gemv(x, w, b)
    assert out.shape == (m, n) and out.dtype == dtype
    assert rel_err(out, linear_torch(x, w, b)) < TOL[dtype]


def test_gemv_on_a_strided_view():
    """x as a column slice of a wider buffer (row stride != K), with leading dims."""
    buf = rand(2, 3, 300, dtype=torch.bfloat16)
    x = buf[..., 10:110]
    w, b = weights(50, 100, torch.bfloat16, bias=True)
    out = gemv(x, w, b)
    assert out.shape == (2, 3, 50)
    assert rel_err(out, linear_torch(x, w, b)) < 1e-2


@pytest.mark.parametrize("cfg", [GemvConfig(1, 64, 1, 1), GemvConfig(16, 64, 4, 3),
                                 GemvConfig(2, 512, 8, 2)])
def test_explicit_configs_agree(cfg):
    """Every tile shape computes the same function (single rows, wide K, more warps)."""
    x = rand(6, 300, dtype=torch.float32)
    w, b = weights(45, 300, torch.float32, bias=True)
    assert rel_err(gemv(x, w, b, config=cfg), linear_torch(x, w, b)) < 1e-5


def test_dispatch_sends_only_single_rows_to_the_gemv():
    """MAX_GEMV_M = 1: the GEMV loses to cuBLAS from two rows up (bench/gemv on an H100)."""
    assert MAX_GEMV_M == 1
    w, b = weights(40, 64, torch.bfloat16, bias=True)
    one = rand(1, 1, 64, dtype=torch.bfloat16)
    assert use_gemv(one, w) and not use_gemv(rand(2, 64, dtype=torch.bfloat16), w)
    assert not use_gemv(one.float(), w)  # dtype mismatch: F.linear
    assert linear(one, w, b).shape == (1, 1, 40)
    assert rel_err(linear(one, w, b), linear_torch(one, w, b)) < 1e-2
    two = rand(2, 3, 64, dtype=torch.bfloat16)  # past MAX_GEMV_M: F.linear, bit for bit
    assert torch.equal(linear(two, w, b), linear_torch(two, w, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 4])
def test_rmsnorm_linear_is_norm_then_linear(dtype, rows):
    x, r = rand(rows, 64, dtype=dtype, scale=2), rand(rows, 64, dtype=dtype)
    nw = rand(64, dtype=dtype)
    w, _ = weights(40, 64, dtype, bias=False)
    normed, ref_s = rms_norm_torch(x, nw, 1e-6, r.clone())
    ref_y = linear_torch(normed, w)
    y, s = rmsnorm_linear(x, r, nw, 1e-6, w)  # may overwrite r in place (Triton rms_norm)
    # the interpreter truncates where the GPU rounds, so half-precision sums may differ by an ulp
    assert rel_err(s, ref_s) < TOL[dtype] and rel_err(y, ref_y) < TOL[dtype]
    y = rmsnorm_linear(x, None, nw, 1e-6, w)
    assert rel_err(y, linear_torch(rms_norm_torch(x, nw, 1e-6), w)) < TOL[dtype]


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("residual", [False, True])
def test_rmsnorm_linear_with_silu_mul(rows, residual):
    """norm -> gate|up projection -> silu(gate) * up (separate kernels; the fused GEMV has its
    own test below); against float64 (the bf16 chain of kernels rounds at every step)."""
    x = rand(rows, 64, dtype=torch.bfloat16, scale=3)
    r = rand(rows, 64, dtype=torch.bfloat16) if residual else None
    nw = rand(64, dtype=torch.bfloat16)
    w, b = weights(80, 64, torch.bfloat16, bias=True)
    stream = x.double() + (r.double() if residual else 0)
    normed = stream * torch.rsqrt(stream.pow(2).mean(-1, keepdim=True) + 1e-6) * nw.double()
    gate_up = F_linear64(normed, w, b)
    ref = torch.nn.functional.silu(gate_up[:, :40]) * gate_up[:, 40:]
    out = rmsnorm_linear(x, None if r is None else r.clone(), nw, 1e-6, w, b, silu_mul=True)
    y, s = out if residual else (out, x)
    assert y.shape == (rows, 40)
    assert rel_err(y, ref) < 2e-2 and rel_err(s, stream) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("silu_mul", [False, True])
def test_fused_prologue_and_epilogue(dtype, m, n, k, silu_mul):
    """gemv(norm=..., silu_mul=...) against rms_norm -> F.linear -> silu_and_mul in float64;
    the new residual is x + residual rounded to the dtype, in a new tensor."""
    x, r = rand(m, k, dtype=dtype, scale=2), rand(m, k, dtype=dtype)
    nw = rand(k, dtype=dtype).abs() + 0.5
    w, b = weights(2 * n if silu_mul else n, k, dtype, bias=True)
    stream = x.double() + r.double()
    normed = stream * torch.rsqrt(stream.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.double()
    ref = F_linear64(normed, w, b)
    if silu_mul:
        ref = torch.nn.functional.silu(ref[:, :n]) * ref[:, n:]
    r_before = r.clone()
    y, new_r = gemv(x, w, b, norm=NormPrologue(nw, 1e-5, r), silu_mul=silu_mul)
    assert y.shape == (m, n) and new_r.shape == (m, k) and new_r.data_ptr() != r.data_ptr()
    assert torch.equal(r, r_before)  # read only: other programs still read it
    assert rel_err(new_r, (x.float() + r.float()).to(dtype)) <= (1e-7 if DEV == "cuda" else 1e-2)
    assert rel_err(y, ref) < TOL[dtype] * (2 if silu_mul else 1)
    y = gemv(x, w, b, norm=NormPrologue(nw, 1e-5), silu_mul=silu_mul)  # no residual: one tensor
    x64 = x.double()
    normed = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.double()
    ref = F_linear64(normed, w, b)
    if silu_mul:
        ref = torch.nn.functional.silu(ref[:, :n]) * ref[:, n:]
    assert rel_err(y, ref) < TOL[dtype] * (2 if silu_mul else 1)


def F_linear64(x64, w, b):
    return torch.nn.functional.linear(x64, w.double(), None if b is None else b.double())


def test_bad_inputs_name_the_field():
    w, _ = weights(8, 64, torch.float32, bias=False)
    with pytest.raises(ValueError, match="x:"):
        gemv(rand(9, 64, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="weight:"):
        gemv(rand(1, 32, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="bias:"):
        gemv(rand(1, 64, dtype=torch.float32), w, rand(7, dtype=torch.float32))
    one = rand(1, 64, dtype=torch.float32)
    with pytest.raises(ValueError, match="norm.weight:"):
        gemv(one, w, norm=NormPrologue(rand(32, dtype=torch.float32), 1e-6))
    with pytest.raises(ValueError, match="norm.residual:"):
        gemv(one, w, norm=NormPrologue(rand(64, dtype=torch.float32), 1e-6, rand(2, 64, dtype=torch.float32)))
    with pytest.raises(ValueError, match="weight: silu_mul"):
        gemv(one, rand(7, 64, dtype=torch.float32), silu_mul=True)


def test_grid_fills_an_h100_for_decode_shapes():
    """>= 2 programs per SM (132) for every Llama-3.2-1B / 3.1-8B linear at M <= 8."""
    for n, k in [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048),
                 (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]:
        for m_pad in (1, 2, 4, 8):
            cfg = pick_config(m_pad, n, k, 132)
            assert -(-n // cfg.block_n) >= 256, (n, k, m_pad, cfg)
