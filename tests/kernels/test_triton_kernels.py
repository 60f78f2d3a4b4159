"""Each Triton kernel against its torch reference on random inputs of varied shapes (GPU only).

Errors are measured as ||out - ref|| / ||ref||; outputs are poisoned (NaN) first where the
kernel writes into a given buffer, so an unwritten element fails.
"""

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
triton = pytest.importorskip("triton")

from rollserve.core.forward_context import ForwardContext  # noqa: E402
from rollserve.executor.kv_pool import KVPool  # noqa: E402
from rollserve.core.sampling_params import SamplingParams  # noqa: E402
from rollserve.kernels.activation import silu_and_mul_torch  # noqa: E402
from rollserve.kernels.activation_triton import silu_and_mul_triton  # noqa: E402
from rollserve.executor.attention.torch_native import TorchNativeBackend, attention_torch  # noqa: E402
from rollserve.executor.attention.triton import attention_triton  # noqa: E402
from rollserve.kernels.dispatch import interpreting  # noqa: E402
from rollserve.kernels.kv_store_triton import kv_store_triton  # noqa: E402
from rollserve.kernels.norm import rms_norm_torch  # noqa: E402
from rollserve.kernels.norm_triton import rms_norm_triton  # noqa: E402
from rollserve.kernels.rope_store_triton import rope_store_triton  # noqa: E402
from rollserve.kernels.rotary import rope_store_torch  # noqa: E402
from rollserve.kernels.sampling import params_table, sample_filtered_torch  # noqa: E402
from rollserve.kernels.sampling_triton import sample_triton  # noqa: E402
from tests.kernels import pool_contexts  # noqa: E402
from tests.kernels.checks import rel_err  # noqa: E402
from tests.kernels.pool_contexts import DEV, PoolContexts, as_float, rope_inputs  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("rows,dim", [(1, 2048), (7, 4096), (300, 1024), (33, 1000), (2, 64)])
@pytest.mark.parametrize("fused", [False, True])
def test_rms_norm(dtype, rows, dim, fused):
    x = torch.randn(rows, dim, dtype=dtype, device=DEV) * 2
    w = torch.randn(dim, dtype=dtype, device=DEV)
    r = torch.randn(rows, dim, dtype=dtype, device=DEV) if fused else None
    ref = rms_norm_torch(x, w, 1e-6, r)
    out = rms_norm_triton(x, w, 1e-6, r.clone() if fused else None)
    if fused:
        assert torch.equal(out[1], ref[1])  # the rounded sum is exact
        out, ref = out[0], ref[0]
    assert rel_err(out, ref) < TOL[dtype] / 4
    if dtype == torch.bfloat16:  # same rounding steps: nearly every element bit-equal
        assert (out != ref).float().mean().item() < 0.01


@pytest.mark.parametrize("heads,head_dim", [(16, 128), (8, 64), (2, 16)])
def test_rms_norm_per_head_on_strided_view(heads, head_dim):
    """Qwen3's q/k norm: rows are heads of a [T, H, D] view into the fused qkv output."""
    qkv = torch.randn(37, heads * head_dim * 3, dtype=torch.bfloat16, device=DEV)
    q = qkv[:, : heads * head_dim].view(37, heads, head_dim)
    w = torch.randn(head_dim, dtype=torch.bfloat16, device=DEV)
    assert rel_err(rms_norm_triton(q, w, 1e-6), rms_norm_torch(q, w, 1e-6)) < 3e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("rows,inner", [(1, 8192), (129, 14336), (5, 3072), (64, 1000)])
def test_silu_and_mul(dtype, rows, inner):
    x = torch.randn(rows, 2 * inner, dtype=dtype, device=DEV) * 3
    assert rel_err(silu_and_mul_triton(x), silu_and_mul_torch(x)) < TOL[dtype] / 4


def test_kv_store_writes_only_given_slots():
    k_cache = torch.full((500, 8, 128), float("nan"), dtype=torch.bfloat16, device=DEV)
    v_cache = k_cache.clone()
    loc = torch.randperm(499, device=DEV)[:37] + 1
    kv = torch.randn(37, 3, 8, 128, dtype=torch.bfloat16, device=DEV)
    k, v = kv[:, 0], kv[:, 2]  # strided token dim, as views of the fused projection
    kv_store_triton(k_cache, v_cache, loc, k, v)
    assert torch.equal(k_cache[loc], k) and torch.equal(v_cache[loc], v)
    untouched = torch.ones(500, dtype=torch.bool, device=DEV)
    untouched[loc] = False
    assert torch.isnan(k_cache[untouched]).all()


# ---------------------------------------------------------------- attention

def run_both(contexts, ctx, q_heads, window=None, causal=True):
    return pool_contexts.run_both(attention_triton, contexts, ctx, q_heads, window, causal)


SHAPES = [(32, 8, 128), (32, 8, 64), (16, 8, 128), (8, 1, 64), (12, 4, 96), (4, 2, 16)]


@pytest.mark.parametrize("q_heads,kv_heads,head_dim", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_prefill_then_chunks_then_decode(q_heads, kv_heads, head_dim, dtype):
    torch.manual_seed(q_heads + head_dim)
    contexts = PoolContexts(kv_heads, head_dim, dtype)
    rows = [0, 3, 5, 9]
    for extend_lens in ([300, 1, 77, 1025], [64, 250, 1, 3], [1, 1, 1, 1], [1, 1, 1, 1], [5, 1, 200, 1]):
        ctx = contexts.context(rows, extend_lens)
        out, ref = run_both(contexts, ctx, q_heads)
        assert rel_err(out, ref) < TOL[dtype], extend_lens


@pytest.mark.parametrize("batch,length", [(1, 5000), (3, 1), (64, 700), (200, 33)])
def test_decode_split_k(batch, length):
    torch.manual_seed(batch)
    contexts = PoolContexts(8, 128, torch.bfloat16, num_slots=batch * (length + 2) + 10,
                            rows=batch, max_context=length + 2)
    rows = list(range(batch))
    contexts.context(rows, [length] * batch)  # fill the pool (values come from the store below)
    contexts.pool.k_buffers[0].normal_()
    contexts.pool.v_buffers[0].normal_()
    ctx = contexts.context(rows, [1] * batch)
    out, ref = run_both(contexts, ctx, 32)
    assert rel_err(out, ref) < TOL[torch.bfloat16]


@pytest.mark.parametrize("window", [1, 17, 300])
def test_sliding_window(window):
    contexts = PoolContexts(2, 64, torch.bfloat16)
    rows = [1, 2]
    for extend_lens in ([400, 20], [1, 1], [30, 129]):
        out, ref = run_both(contexts, contexts.context(rows, extend_lens), 8, window=window)
        assert rel_err(out, ref) < TOL[torch.bfloat16]


def test_non_causal_extend():
    contexts = PoolContexts(4, 64, torch.bfloat16)
    out, ref = run_both(contexts, contexts.context([0, 1], [90, 7]), 8, causal=False)
    assert rel_err(out, ref) < TOL[torch.bfloat16]


def test_decode_replays_in_a_cuda_graph():
    """Metadata fixed at capture; sequence lengths and slots change between replays."""
    from rollserve.executor.attention.triton import decode_metadata

    contexts = PoolContexts(8, 128, torch.bfloat16)
    rows = [0, 1, 2]
    contexts.context(rows, [100, 5, 2000])
    static = contexts.context(rows, [1, 1, 1])
    static.attn_metadata = decode_metadata(3, 8, torch.device(DEV))
    q = torch.randn(3, 32, 128, dtype=torch.bfloat16, device=DEV)
    k, v = torch.randn(2, 3, 8, 128, dtype=torch.bfloat16, device=DEV)
    attention_triton(q, k, v, static, 0, 128 ** -0.5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = attention_triton(q, k, v, static, 0, 128 ** -0.5)
    for _ in range(3):
        fresh = contexts.context(rows, [1, 1, 1])
        for name in ("positions", "out_cache_loc", "seq_lens", "prefix_lens"):
            getattr(static, name).copy_(getattr(fresh, name))
        q.normal_(), k.normal_(), v.normal_()
        graph.replay()
        ref = attention_torch(q.float(), k.float(), v.float(), as_float(fresh, contexts), 0, 128 ** -0.5)
        assert rel_err(out, ref) < TOL[torch.bfloat16]


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("vocab", [151936, 128256, 1000])
def test_sampling_matches_sorting_reference(vocab):
    torch.manual_seed(vocab)
    settings = [(1.0, -1, 1.0, 0.0), (0.7, 50, 1.0, 0.0), (1.0, -1, 0.9, 0.0), (1.2, 40, 0.8, 0.0),
                (1.0, -1, 1.0, 0.05), (0.6, 20, 0.95, 0.1), (1.0, 1, 1.0, 0.0), (1.0, -1, 0.2, 0.0),
                (1.0, 5000, 0.99, 0.0)]
    params = [SamplingParams(temperature=t, top_k=k, top_p=p, min_p=m) for t, k, p, m in settings] * 8
    logits = torch.randn(len(params), vocab, device=DEV) * 4
    table = params_table(params, vocab, DEV)
    agree = total = 0
    for _ in range(20):
        noise = torch.empty_like(logits).uniform_().log_().neg_()
        ours = sample_triton(logits, table, noise)
        ref = sample_filtered_torch(logits, params, noise)
        agree += (ours == ref).sum().item()
        total += len(params)
    # the two differ only where float sums put a boundary token on the other side
    assert agree / total > 0.995, (agree, total)


def test_sampling_top_k_one_is_argmax_and_respects_filters():
    logits = torch.randn(64, 32000, device=DEV) * 3
    params = [SamplingParams(temperature=1.0, top_k=1)] * 32 + [SamplingParams(temperature=1.0, top_k=3)] * 32
    noise = torch.empty_like(logits).uniform_().log_().neg_()
    ids = sample_triton(logits, params_table(params, 32000, DEV), noise)
    assert torch.equal(ids[:32], logits[:32].argmax(-1))
    top3 = logits[32:].topk(3, dim=-1).indices
    assert (top3 == ids[32:, None]).any(-1).all()


# ---------------------------------------------------------------- fused (q/k norm +) rotary + KV store

def _nan_pool(kv_heads, head_dim, dtype, num_slots=600):
    pool = KVPool(num_slots, 1, kv_heads, head_dim, dtype, DEV)
    pool.k_buffers[0].fill_(float("nan"))
    pool.v_buffers[0].fill_(float("nan"))
    return pool


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("tokens,q_heads,kv_heads,head_dim", [(1, 32, 8, 128), (300, 32, 8, 64),
                                                             (77, 16, 16, 128), (5, 8, 1, 64),
                                                             (33, 12, 4, 128)])
def test_rope_store_matches_reference(dtype, qk_norm, tokens, q_heads, kv_heads, head_dim):
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * head_dim, dtype=dtype, device=DEV) * 2
    q, k, v = qkv.split([q_heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(tokens, q_heads, head_dim)
    k, v = k.view(tokens, kv_heads, head_dim), v.view(tokens, kv_heads, head_dim)
    rope = rope_inputs(torch.randint(0, 100000, (tokens,), device=DEV), head_dim, dtype, qk_norm)
    ours, ref = _nan_pool(kv_heads, head_dim, dtype), _nan_pool(kv_heads, head_dim, dtype)
    loc = torch.randperm(600, device=DEV)[:tokens] + 1
    kv_before = qkv[:, q_heads * head_dim:].clone()
    ref_q = rope_store_torch(q.clone(), k, v, rope, ref, 0, loc)
    out_q = rope_store_triton(q, k, v, rope, *ours.kv(0), loc)

    assert out_q.data_ptr() == q.data_ptr() and torch.equal(qkv[:, q_heads * head_dim:], kv_before)
    out_k, ref_k = ours.k_buffers[0][loc], ref.k_buffers[0][loc]
    # Triton's CPU interpreter truncates float32 -> bfloat16 (the GPU rounds to nearest even).
    # On the H100 about a quarter of the half-precision outputs differ from the reference by
    # one rounding (relative error ~2.4e-3 in bf16, the same as the earlier rotary-only
    # kernel): within one rounding, not bit-equal.
    bf16_truncated = dtype == torch.bfloat16 and interpreting()
    tol = 2 * TOL[dtype] if bf16_truncated else TOL[dtype] / 2
    assert rel_err(out_q, ref_q) < tol and rel_err(out_k, ref_k) < tol
    assert torch.equal(ours.v_buffers[0][loc], v)
    untouched = torch.ones(601, dtype=torch.bool, device=DEV)
    untouched[loc] = False
    assert torch.isnan(ours.k_buffers[0][untouched]).all()
    assert torch.isnan(ours.v_buffers[0][untouched]).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_with_rope_matches_reference(qk_norm, dtype):
    """attention(rope=...) on the Triton backend against the torch backend, prefill then decode."""
    contexts = PoolContexts(4, 128, dtype)
    rows = [0, 2, 7]
    for extend_lens in ([100, 1, 37], [1, 1, 1]):
        ctx = contexts.context(rows, extend_lens)
        q = torch.randn(ctx.num_tokens, 16, 128, dtype=dtype, device=DEV)
        k, v = torch.randn(2, ctx.num_tokens, 4, 128, dtype=dtype, device=DEV)
        rope = rope_inputs(ctx.positions, 128, dtype, qk_norm)
        out = attention_triton(q.clone(), k, v, ctx, 0, 128 ** -0.5, rope=rope)
        ref = attention_torch(q.float(), k.float(), v.float(), as_float(ctx, contexts), 0,
                              128 ** -0.5, rope=rope)
        assert rel_err(out, ref) < TOL[dtype], extend_lens


# ---------------------------------------------------------------- one-launch split-K decode

def _decode_reference(q, k_cache, v_cache, ctx, window=None):
    """attention_torch over float32 copies of the caches (the new tokens are already in them)."""
    pool32 = KVPool(1, 1, k_cache.shape[1], k_cache.shape[2], torch.float32, DEV)
    pool32.k_buffers, pool32.v_buffers = [k_cache.float()], [v_cache.float()]
    loc = ctx.out_cache_loc
    ctx32 = ForwardContext(**{**ctx.__dict__, "kv_pool": pool32,
                              "attn_backend": TorchNativeBackend(DEV, pool32.num_kv_heads),
                              "attn_metadata": None})
    return attention_torch(q.float(), pool32.k_buffers[0][loc], pool32.v_buffers[0][loc], ctx32, 0,
                           q.shape[-1] ** -0.5, window)


def _decode(q, k_cache, v_cache, ctx, num_splits, window=None):
    from rollserve.kernels.decode_attention_triton import decode_attention_triton

    out = torch.full_like(q, float("nan"))
    return decode_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                   ctx.seq_lens, q.shape[-1] ** -0.5, num_splits, window, out)


def _filled_contexts(rows, lengths, kv_heads=4, head_dim=64):
    contexts = PoolContexts(kv_heads, head_dim, torch.bfloat16, num_slots=6000, rows=len(rows),
                            max_context=max(lengths) + 10)
    contexts.context(rows, lengths)
    contexts.pool.k_buffers[0].normal_()
    contexts.pool.v_buffers[0].normal_()
    return contexts


def test_decode_every_split_count():
    """Splits longer than needed (empty programs), tile-sized, several tiles, and one split."""
    rows = [0, 1, 2]
    contexts = _filled_contexts(rows, [0, 129, 700])  # row 0 decodes its first token
    ctx = contexts.context(rows, [1, 1, 1])
    k_cache, v_cache = contexts.pool.kv(0)
    q = torch.randn(3, 16, 64, dtype=torch.bfloat16, device=DEV)
    for window in (None, 100):
        ref = _decode_reference(q, k_cache, v_cache, ctx, window)
        for num_splits in range(1, 33) if window is None else (1, 3, 32):
            out = _decode(q, k_cache, v_cache, ctx, num_splits, window)
            assert rel_err(out, ref) < TOL[torch.bfloat16], (num_splits, window)


@pytest.mark.parametrize("in_graph", [False, True])
def test_decode_counters_reset_across_steps_and_layers(in_graph):
    """Two layers (two caches) per step, several steps in a row: a counter left non-zero
    would make the next launch merge early (or never)."""
    from rollserve.kernels.decode_attention_triton import arrival_counters

    if in_graph and DEV != "cuda":
        pytest.skip("CUDA graphs need CUDA")
    rows = [0, 1, 2]
    contexts = _filled_contexts(rows, [100, 5, 2000], kv_heads=8, head_dim=128)
    layers = [contexts.pool.kv(0), tuple(torch.randn_like(b) for b in contexts.pool.kv(0))]
    q = [torch.randn(3, 32, 128, dtype=torch.bfloat16, device=DEV) for _ in layers]
    static = contexts.context(rows, [1, 1, 1])
    step = lambda: [_decode(q[i], *layers[i], static, 16) for i in range(2)]  # noqa: E731
    outs = step()  # compiles and sizes the counters outside any capture
    if in_graph:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = step()
    for _ in range(4):
        fresh = contexts.context(rows, [1, 1, 1])
        static.seq_lens.copy_(fresh.seq_lens)
        static.out_cache_loc.copy_(fresh.out_cache_loc)
        for t in q:
            t.normal_()
        if in_graph:
            graph.replay()
        else:
            outs = step()
        for i, (k_cache, v_cache) in enumerate(layers):
            assert rel_err(outs[i], _decode_reference(q[i], k_cache, v_cache, fresh)) < TOL[torch.bfloat16]
        assert not arrival_counters(q[0].device, 1).any()
