"""The small-batch Triton GEMV and its fused prologues against the torch references (GPU;
also runs in Triton's interpreter on CPU tensors when TRITON_INTERPRET=1).

Errors are ||out - ref|| / ||ref||; every output element is checked written (no NaN), and the
new residual must equal x + residual exactly.
"""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from rollserve.kernels.gemv_triton import (GemvConfig, gemv, pick_config,  # noqa: E402
                                           rmsnorm_gemv, silu_mul_gemv)
from rollserve.kernels.linear import (linear, linear_torch, rmsnorm_linear,  # noqa: E402
                                      rmsnorm_linear_torch, silu_mul_linear,
                                      silu_mul_linear_torch)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (M, N, K): odd N and K off the block sizes, and M on and off a power of two
SHAPES = [(1, 40, 96), (3, 33, 200), (8, 17, 64), (5, 70, 130), (2, 257, 1000)]
if torch.cuda.is_available():  # real decode shapes only where they run fast
    SHAPES += [(1, 3072, 2048), (4, 2048, 8192), (8, 16384, 2048), (7, 4096, 14336)]


@pytest.fixture(autouse=True)
def _seeded(request):
    torch.manual_seed(sum(map(ord, request.node.nodeid)))


def rel_err(out, ref):
    assert not torch.isnan(out).any(), "NaN in output (unwritten element?)"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30)).item()


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


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rmsnorm_gemv(dtype, m, n, k, with_residual):
    x = rand(m, k, dtype=dtype, scale=2)
    residual = rand(m, k, dtype=dtype) if with_residual else None
    norm_w = rand(k, dtype=dtype)
    w, b = weights(n, k, dtype, bias=with_residual)
    ref = rmsnorm_linear_torch(x, residual, norm_w, 1e-6, w, b)
    before = residual.clone() if with_residual else None
    out = rmsnorm_gemv(x, residual, norm_w, 1e-6, w, b)
    if with_residual:
        assert torch.equal(out[1], ref[1])  # x + residual, rounded as the reference rounds
        assert torch.equal(residual, before)  # the input residual is left as it was
        out, ref = out[0], ref[0]
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_silu_mul_gemv(dtype, m, n, k):
    gate_up = rand(m, 2 * k, dtype=dtype, scale=3)
    w, b = weights(n, k, dtype, bias=m % 2 == 1)
    assert rel_err(silu_mul_gemv(gate_up, w, b), silu_mul_linear_torch(gate_up, w, b)) < TOL[dtype]


def test_silu_mul_gemv_on_a_strided_view():
    """gate_up as a column slice of a wider buffer (row stride != 2K)."""
    buf = rand(3, 300, dtype=torch.bfloat16)
    gate_up = buf[:, 10:210]
    w, _ = weights(50, 100, torch.bfloat16, bias=False)
    assert rel_err(silu_mul_gemv(gate_up, w), silu_mul_linear_torch(gate_up, w)) < 1e-2


@pytest.mark.parametrize("cfg", [GemvConfig(1, 64, 1, 1), GemvConfig(16, 64, 4, 3),
                                 GemvConfig(2, 512, 8, 2)])
def test_explicit_configs_agree(cfg):
    """Every tile shape computes the same function (single rows, wide K, more warps)."""
    x, r = rand(6, 300, dtype=torch.float32), rand(6, 300, dtype=torch.float32)
    norm_w = rand(300, dtype=torch.float32)
    w, b = weights(45, 300, torch.float32, bias=True)
    assert rel_err(gemv(x, w, b, config=cfg), linear_torch(x, w, b)) < 1e-5
    y, s = rmsnorm_gemv(x, r, norm_w, 1e-5, w, config=cfg)
    ref_y, ref_s = rmsnorm_linear_torch(x, r, norm_w, 1e-5, w)
    assert torch.equal(s, ref_s) and rel_err(y, ref_y) < 1e-5


def test_leading_dims_and_dispatch():
    x = rand(2, 3, 64, dtype=torch.bfloat16)  # 6 rows through the GEMV
    w, b = weights(40, 64, torch.bfloat16, bias=True)
    assert linear(x, w, b).shape == (2, 3, 40)
    assert rel_err(linear(x, w, b), linear_torch(x, w, b)) < 1e-2
    big = rand(20, 64, dtype=torch.bfloat16)  # past MAX_GEMV_M: F.linear
    assert torch.equal(linear(big, w, b), linear_torch(big, w, b))
    r, nw = rand(2, 3, 64, dtype=torch.bfloat16), rand(64, dtype=torch.bfloat16)
    ref_y, ref_s = rmsnorm_linear_torch(x, r, nw, 1e-6, w)
    y, s = rmsnorm_linear(x, r, nw, 1e-6, w)
    assert torch.equal(s, ref_s) and rel_err(y, ref_y) < 1e-2
    gu = rand(5, 128, dtype=torch.bfloat16)
    assert rel_err(silu_mul_linear(gu, w), silu_mul_linear_torch(gu, w)) < 1e-2


def test_bad_inputs_name_the_field():
    w, _ = weights(8, 64, torch.float32, bias=False)
    with pytest.raises(ValueError, match="x:"):
        gemv(rand(9, 64, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="weight:"):
        gemv(rand(1, 32, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="bias:"):
        gemv(rand(1, 64, dtype=torch.float32), w, rand(7, dtype=torch.float32))
    with pytest.raises(ValueError, match="norm_weight:"):
        rmsnorm_gemv(rand(1, 64, dtype=torch.float32), None, rand(32, dtype=torch.float32), 1e-6, w)


def test_grid_fills_an_h100_for_decode_shapes():
    """>= 2 programs per SM (132) for every Llama-3.2-1B / 3.1-8B linear at M <= 8."""
    for n, k in [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048),
                 (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]:
        for m_pad in (1, 2, 4, 8):
            for prologue in (0, 1, 2):
                cfg = pick_config(m_pad, n, k, prologue, 132)
                assert -(-n // cfg.block_n) >= 256, (n, k, m_pad, prologue, cfg)
