"""The batch-invariant matmuls (kernels/batch_invariant.py): a row's result is bitwise the
same whatever rows share its batch. The engine-level property (tokens and logprobs over
batches, chunkings, cache states) is tests/scheduler/test_deterministic.py."""

from __future__ import annotations

import pytest
import torch

from rollserve.kernels import batch_invariant


def _rows_alone_and_in_batches(fn, x, weight):
    alone = [fn(x[i:i + 1], weight) for i in range(x.shape[0])]
    for size in (2, 3, 16, 33, 64):
        for start in range(0, x.shape[0] - size + 1, 17):
            together = fn(x[start:start + size], weight)
            for i in range(size):
                assert torch.equal(together[i], alone[start + i][0]), (size, start, i)


def test_rowwise_linear_is_batch_invariant_and_is_a_linear():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, 576, generator=gen)
    weight = torch.randn(1536, 576, generator=gen)
    _rows_alone_and_in_batches(batch_invariant.linear_rowwise, x, weight)
    assert torch.allclose(batch_invariant.linear_rowwise(x, weight), x @ weight.T, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fixed_tile_triton_matmul_is_batch_invariant(dtype):
    from rollserve.kernels.batch_invariant_triton import matmul_fixed_tiles

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(200, 2048, generator=gen, device="cuda").to(dtype)
    weight = torch.randn(4096, 2048, generator=gen, device="cuda").to(dtype)
    _rows_alone_and_in_batches(matmul_fixed_tiles, x, weight)
    ref = (x.float() @ weight.float().T)
    assert torch.allclose(matmul_fixed_tiles(x, weight).float(), ref, rtol=2e-2, atol=2e-1)
