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

from rollserve.kernels.activation import silu_and_mul_torch  # noqa: E402
from rollserve.kernels.gemv_triton import GemvConfig, gemv, pick_config  # noqa: E402
from rollserve.kernels.linear import (MAX_GEMV_M, linear, linear_torch,  # noqa: E402
                                      rmsnorm_linear, silu_mul_linear, use_gemv)
from rollserve.kernels.norm import rms_norm_torch  # noqa: E402

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
def test_silu_mul_linear_is_activation_then_linear(rows):
    gate_up = rand(rows, 128, dtype=torch.bfloat16, scale=3)
    w, b = weights(40, 64, torch.bfloat16, bias=True)
    ref = linear_torch(silu_and_mul_torch(gate_up), w, b)
    assert rel_err(silu_mul_linear(gate_up, w, b), ref) < 1e-2


def test_bad_inputs_name_the_field():
    w, _ = weights(8, 64, torch.float32, bias=False)
    with pytest.raises(ValueError, match="x:"):
        gemv(rand(9, 64, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="weight:"):
        gemv(rand(1, 32, dtype=torch.float32), w)
    with pytest.raises(ValueError, match="bias:"):
        gemv(rand(1, 64, dtype=torch.float32), w, rand(7, dtype=torch.float32))


def test_grid_fills_an_h100_for_decode_shapes():
    """>= 2 programs per SM (132) for every Llama-3.2-1B / 3.1-8B linear at M <= 8."""
    for n, k in [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192), (128256, 2048),
                 (6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]:
        for m_pad in (1, 2, 4, 8):
            cfg = pick_config(m_pad, n, k, 132)
            assert -(-n // cfg.block_n) >= 256, (n, k, m_pad, cfg)
