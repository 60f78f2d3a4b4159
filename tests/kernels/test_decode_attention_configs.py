"""Every decode-attention config the benchmark sweeps (rollserve.bench.decode_attention) against
the torch reference, with one split and several (GPU; also in Triton's interpreter on CPU
tensors when TRITON_INTERPRET=1, on smaller cases).

Lengths include 1 and values off every BLOCK_N; slots are scattered over the pool. Outputs
are poisoned (NaN) first, so an unwritten element fails.
"""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
triton = pytest.importorskip("triton")

from rollserve.bench.decode_attention import sweep_configs  # noqa: E402
from rollserve.core.forward_context import ForwardContext  # noqa: E402
from rollserve.executor.kv_pool import KVPool  # noqa: E402
from rollserve.executor.attention.torch_native import TorchNativeBackend, attention_torch  # noqa: E402
from rollserve.kernels.decode_attention_triton import (DecodeConfig, arrival_counters,  # noqa: E402
                                                       decode_attention_triton, decode_config)
from tests.kernels.checks import rel_err  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
# Triton 3.9's interpreter keeps bfloat16 as raw uint16 bits and multiplies those in tl.dot
# (garbage), so it runs the same kernel on float16 inputs.
DTYPE = torch.bfloat16 if torch.cuda.is_available() else torch.float16
TOL = 1e-2  # half-precision inputs against a float32 reference
if torch.cuda.is_available():  # (q heads, KV heads), lengths, split counts
    HEADS, LENGTHS, SPLITS = (32, 8), [1, 31, 81, 200, 700, 1337], (1, 3, 32)
else:  # the interpreter runs every program in Python: few heads, short sequences
    HEADS, LENGTHS, SPLITS = (8, 2), [1, 17, 100, 150], (1, 3)




def _decode_batch(lengths, num_kv_heads, head_dim):
    """A half-precision pool whose requests' slots are scattered, and the decode context over it (each
    request's newest token, the one being decoded, is already in the pool)."""
    num_slots = sum(lengths) + 64
    pool = KVPool(num_slots, 1, num_kv_heads, head_dim, DTYPE, DEV)
    pool.k_buffers[0].normal_()
    pool.v_buffers[0].normal_()
    batch = len(lengths)
    req_to_token = torch.zeros(batch + 2, max(lengths) + 5, dtype=torch.int32, device=DEV)
    rows = torch.randperm(batch + 2)[:batch]  # request rows out of order
    free = torch.randperm(num_slots) + 1
    for row, n in zip(rows.tolist(), lengths):
        req_to_token[row, :n], free = free[:n].to(DEV, torch.int32), free[n:]
    t = lambda v: torch.as_tensor(v, dtype=torch.int64, device=DEV)  # noqa: E731
    seq_lens = t(lengths)
    req_pool_indices = t(rows)
    last_slots = req_to_token[req_pool_indices, seq_lens - 1].long()
    ctx = ForwardContext(
        positions=seq_lens - 1, out_cache_loc=last_slots, req_pool_indices=req_pool_indices,
        req_to_token=req_to_token, prefix_lens=seq_lens - 1, extend_lens=torch.ones_like(seq_lens),
        seq_lens=seq_lens, extend_start_loc=t(range(batch)), kv_pool=pool,
        prefix_lens_cpu=[n - 1 for n in lengths], extend_lens_cpu=[1] * batch,
        attn_backend=TorchNativeBackend(DEV, pool.num_kv_heads))
    return pool, ctx


def _reference(q, pool, ctx, window):
    """attention_torch over a float32 copy of the pool (storing the newest K/V again is a no-op)."""
    pool32 = KVPool(1, 1, pool.num_kv_heads, pool.head_dim, torch.float32, DEV)
    pool32.k_buffers, pool32.v_buffers = [pool.k_buffers[0].float()], [pool.v_buffers[0].float()]
    ctx32 = ForwardContext(**{**ctx.__dict__, "kv_pool": pool32})
    loc = ctx.out_cache_loc
    return attention_torch(q.float(), pool32.k_buffers[0][loc], pool32.v_buffers[0][loc], ctx32, 0,
                           q.shape[-1] ** -0.5, window)


def _run(q, pool, ctx, num_splits, window, config):
    k_cache, v_cache = pool.kv(0)
    out = torch.full_like(q, float("nan"))
    try:
        return decode_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                       ctx.seq_lens, q.shape[-1] ** -0.5, num_splits, window, out,
                                       config=config)
    except triton.runtime.errors.OutOfResources as e:  # a config too big for this GPU's SMs
        pytest.skip(f"{config} does not fit this GPU: {e}")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("config", sweep_configs(),
                         ids=lambda c: f"n{c.block_n}_w{c.num_warps}_s{c.num_stages}")
def test_every_sweep_config_matches_reference(config, head_dim):
    q_heads, kv_heads = HEADS
    pool, ctx = _decode_batch(LENGTHS, kv_heads, head_dim)
    q = torch.randn(len(LENGTHS), q_heads, head_dim, dtype=DTYPE, device=DEV)
    for window in (None, 90):
        ref = _reference(q, pool, ctx, window)
        for num_splits in SPLITS:
            out = _run(q, pool, ctx, num_splits, window, config)
            assert rel_err(out, ref) < TOL, (num_splits, window)
            assert not arrival_counters(q.device, 1).any(), "a counter left non-zero"


def test_default_config_follows_the_sweep_and_bad_configs_name_their_field():
    assert decode_config(290, 128) == DecodeConfig(block_n=128, num_warps=4, num_stages=3)
    assert decode_config(1, 64) == DecodeConfig(block_n=128, num_warps=4, num_stages=2)
    assert decode_config(1, 256).block_n == 32
    pool, ctx = _decode_batch([5, 9], 2, 64)
    q = torch.randn(2, 8, 64, dtype=DTYPE, device=DEV)
    for bad, field in ((DecodeConfig(block_n=48), "config.block_n"),
                       (DecodeConfig(block_n=8), "config.block_n"),
                       (DecodeConfig(num_warps=3), "config.num_warps"),
                       (DecodeConfig(num_stages=0), "config.num_stages")):
        with pytest.raises(ValueError, match=field):
            _run(q, pool, ctx, 1, None, bad)
    with pytest.raises(ValueError, match="num_splits"):
        _run(q, pool, ctx, 33, None, None)
