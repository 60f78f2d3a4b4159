"""The flashinfer attention backend: its slot lists on any device; its attention against the
torch reference on the GPU where flashinfer is installed (skipped elsewhere)."""

import pytest
import torch

from rollserve.executor.attention.registry import select_attention_backend
from rollserve.executor.attention.flashinfer import (flashinfer_importable, kv_indices, kv_indptr,
                                                    window_left)
from tests.kernels.checks import rel_err


def test_slot_lists_follow_req_to_token():
    req_to_token = torch.arange(5 * 40, dtype=torch.int32).view(5, 40)
    rows, seq_lens = [3, 0, 4], [7, 1, 30]
    indptr = kv_indptr(seq_lens)
    assert indptr.tolist() == [0, 7, 8, 38] and indptr.dtype == torch.int32
    got = kv_indices(req_to_token, torch.tensor(rows), torch.tensor(seq_lens), sum(seq_lens))
    want = torch.cat([req_to_token[r, :n] for r, n in zip(rows, seq_lens)])
    assert got.dtype == torch.int32 and torch.equal(got, want)


def test_window_left_is_inclusive():
    assert window_left(None) == -1
    assert window_left(1) == 0  # a window of one token sees only itself
    assert window_left(300) == 299


def test_refused_with_the_field_named_where_it_cannot_run():
    expected = "not installed" if not flashinfer_importable() else "needs a CUDA device"
    with pytest.raises(ValueError, match=f"attention_backend: flashinfer .*{expected}"):
        select_attention_backend("flashinfer", torch.device("cpu"))


gpu = pytest.mark.skipif(not (torch.cuda.is_available() and flashinfer_importable()),
                         reason="needs CUDA and flashinfer")
BF16_TOL = 1e-2


def _attention(q, k, v, ctx, layer_id, scaling, window=None, causal=True, rope=None):
    from rollserve.executor.attention.flashinfer import FlashInferBackend, attention_flashinfer

    if ctx.attn_metadata is None:
        ctx.attn_metadata = FlashInferBackend(q.device, k.shape[1]).prepare_metadata(ctx)
    return attention_flashinfer(q, k, v, ctx, layer_id, scaling, window, causal, rope)


def _contexts(kv_heads, head_dim, **kwargs):
    from tests.kernels.pool_contexts import PoolContexts

    return PoolContexts(kv_heads, head_dim, torch.bfloat16, backend="flashinfer", **kwargs)


def _check(contexts, ctx, q_heads, window=None, causal=True):
    from tests.kernels.pool_contexts import run_both

    out, ref = run_both(_attention, contexts, ctx, q_heads, window, causal)
    assert rel_err(out, ref) < BF16_TOL


# (query heads, KV heads, head dim): decode on tensor cores from 4 query heads per KV head
@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(32, 8, 128), (8, 2, 64), (16, 8, 128)])
def test_prefill_then_chunks_then_decode(q_heads, kv_heads, head_dim):
    contexts = _contexts(kv_heads, head_dim)
    rows = [0, 3, 5, 9]
    for extend_lens in ([300, 1, 77, 1025], [64, 250, 1, 3], [1, 1, 1, 1], [1, 1, 1, 1], [5, 1, 200, 1]):
        _check(contexts, contexts.context(rows, extend_lens), q_heads)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("batch,length", [(1, 5000), (64, 700), (200, 33)])
def test_long_and_wide_decode(batch, length):
    contexts = _contexts(8, 128, num_slots=batch * (length + 2) + 10, rows=batch,
                         max_context=length + 2)
    rows = list(range(batch))
    contexts.context(rows, [length] * batch)
    contexts.pool.k_buffers[0].normal_()
    contexts.pool.v_buffers[0].normal_()
    _check(contexts, contexts.context(rows, [1] * batch), 32)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("window", [1, 17, 300])
def test_sliding_window(window):
    contexts = _contexts(2, 128)
    for extend_lens in ([400, 20], [1, 1], [30, 129]):
        _check(contexts, contexts.context([1, 2], extend_lens), 8, window=window)


@gpu
@pytest.mark.gpu
def test_non_causal_extend():
    contexts = _contexts(4, 64)
    _check(contexts, contexts.context([0, 1], [90, 7]), 16, causal=False)


@gpu
@pytest.mark.gpu
def test_rope_and_qk_norm_applied_before_attention():
    from rollserve.executor.attention.torch_native import attention_torch
    from tests.kernels.pool_contexts import as_float, rope_inputs

    contexts = _contexts(4, 128)
    for extend_lens in ([100, 1, 37], [1, 1, 1]):
        ctx = contexts.context([0, 2, 7], extend_lens)
        q = torch.randn(ctx.num_tokens, 16, 128, dtype=torch.bfloat16, device="cuda")
        k, v = torch.randn(2, ctx.num_tokens, 4, 128, dtype=torch.bfloat16, device="cuda")
        rope = rope_inputs(ctx.positions, 128, torch.bfloat16, qk_norm=True)
        out = _attention(q.clone(), k, v, ctx, 0, 128 ** -0.5, rope=rope)
        ref = attention_torch(q.float(), k.float(), v.float(), as_float(ctx, contexts), 0,
                              128 ** -0.5, rope=rope)
        assert rel_err(out, ref) < BF16_TOL, extend_lens


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 5])
def test_tree_masks_through_custom_mask(window):
    """Verify trees (M = E), a draft tree step (M > E: earlier nodes in the prefix), a lone
    tree token and requests without a tree in one forward: the prefill wrapper's custom_mask."""
    import random

    from tests.kernels.pool_contexts import fill_pool, tree_batch

    contexts = _contexts(2, 128, num_slots=4000, max_context=1200, rows=8)
    fill_pool(contexts, torch.bfloat16)
    requests = [(1000, 8, 8), (40, 4, 11), (300, 1, 6), (70, 30, None), (9, 1, None)]
    _check(contexts, tree_batch(contexts, requests, random.Random(0)), 8, window=window)
