"""Each kernel's torch reference against an independent, straightforward computation."""

import pytest
import torch

from rollserve.kernels.activation import silu_and_mul
from rollserve.executor.attention.base import attention
from rollserve.kernels.norm import rms_norm
from rollserve.kernels.rotary import apply_rotary, compute_inv_freq, rope_cos_sin, rope_parameters
from tests.executor.model_harness import KVHarness


# ---------------------------------------------------------------- rmsnorm

def _rms_norm_by_hand(x, weight, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def test_rms_norm_matches_formula():
    torch.manual_seed(0)
    x, weight = torch.randn(7, 32) * 3, torch.randn(32)
    torch.testing.assert_close(rms_norm(x, weight, 1e-5), _rms_norm_by_hand(x, weight, 1e-5))


def test_rms_norm_fused_residual_returns_normed_sum_and_sum():
    torch.manual_seed(1)
    x, residual, weight = torch.randn(5, 48), torch.randn(5, 48), torch.randn(48)
    out, new_residual = rms_norm(x, weight, 1e-6, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, _rms_norm_by_hand(x + residual, weight, 1e-6))


def test_rms_norm_bfloat16_equals_transformers():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(2)
    ref = LlamaRMSNorm(64, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        ref.weight.normal_()
    x = torch.randn(9, 64, dtype=torch.bfloat16)
    assert torch.equal(rms_norm(x, ref.weight, 1e-6), ref(x))


# ---------------------------------------------------------------- activation

def test_silu_and_mul_matches_formula():
    torch.manual_seed(3)
    gate, up = torch.randn(6, 20), torch.randn(6, 20)
    expected = gate / (1 + torch.exp(-gate)) * up
    torch.testing.assert_close(silu_and_mul(torch.cat([gate, up], dim=-1)), expected)


# ---------------------------------------------------------------- rotary

def test_rotary_default_is_a_rotation_of_half_split_pairs():
    """Dim i pairs with dim i + D/2 and turns by position * theta^(-2i/D), as a complex product."""
    torch.manual_seed(4)
    dim, theta = 16, 10000.0
    positions = torch.tensor([0, 1, 5, 37, 1000])
    q, k = torch.randn(5, 3, dim), torch.randn(5, 2, dim)
    inv_freq, scale = compute_inv_freq({"rope_type": "default", "rope_theta": theta}, dim, 2048)
    q_rot, k_rot = apply_rotary(q, k, *rope_cos_sin(positions, inv_freq, scale))

    def by_complex(x):
        angles = torch.tensor([[p * theta ** (-2 * i / dim) for i in range(dim // 2)]
                               for p in positions.tolist()], dtype=torch.float64)
        z = torch.complex(x[..., : dim // 2].double(), x[..., dim // 2:].double())
        z = z * torch.polar(torch.ones_like(angles), angles)[:, None, :]
        return torch.cat([z.real, z.imag], dim=-1).float()

    torch.testing.assert_close(q_rot, by_complex(q), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(k_rot, by_complex(k), atol=1e-4, rtol=1e-4)


ROPE_VARIANTS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512},
}


@pytest.mark.parametrize("variant", list(ROPE_VARIANTS))
def test_rotary_matches_transformers(variant):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    scaling = ROPE_VARIANTS[variant]
    config = LlamaConfig(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, rope_theta=50000.0,
                         **({"rope_scaling": dict(scaling)} if scaling else {}))
    torch.manual_seed(5)
    positions = torch.tensor([0, 3, 17, 255, 256, 900, 2047])
    q, k = torch.randn(7, 4, 32), torch.randn(7, 2, 32)

    ref_rotary = LlamaRotaryEmbedding(config)
    cos_ref, sin_ref = ref_rotary(q, positions[None])
    q_ref, k_ref = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos_ref, sin_ref)

    inv_freq, scale = compute_inv_freq(rope_parameters(config), 32, config.max_position_embeddings)
    assert torch.equal(inv_freq, ref_rotary.inv_freq)
    assert scale == pytest.approx(ref_rotary.attention_scaling)
    q_out, k_out = apply_rotary(q, k, *rope_cos_sin(positions, inv_freq, scale))
    torch.testing.assert_close(q_out, q_ref[0].transpose(0, 1), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(k_out, k_ref[0].transpose(0, 1), atol=1e-6, rtol=1e-6)


def test_rope_parameters_reads_old_style_rope_scaling():
    class OldConfig:
        rope_theta = 500000.0
        rope_scaling = {"type": "linear", "factor": 2.0}
        max_position_embeddings = 4096

    params = rope_parameters(OldConfig())
    assert params["rope_type"] == "linear" and params["rope_theta"] == 500000.0
    assert params["factor"] == 2.0


def test_unsupported_rope_type_is_refused():
    with pytest.raises(ValueError, match="longrope"):
        compute_inv_freq({"rope_type": "longrope", "rope_theta": 1e4}, 16, 2048)


# ---------------------------------------------------------------- attention

def _naive_attention(q, k, v, scale, prefix_len, window=None):
    """q [E, Hq, D] are the last E tokens of a sequence with keys/values k, v [S, Hkv, D]."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = torch.empty_like(q)
    for j in range(q.shape[0]):
        pos = prefix_len + j
        lo = 0 if window is None else max(0, pos - window + 1)
        scores = torch.einsum("hd,shd->hs", q[j], k[lo:pos + 1]) * scale
        out[j] = torch.einsum("hs,shd->hd", scores.softmax(-1), v[lo:pos + 1])
    return out


def _run_step(harness, full_kv, rows, extend_lens, scale, window=None, num_heads=4):
    """Attention for extend_lens[i] new tokens of each request; checks against naive attention."""
    num_kv_heads, head_dim = harness.pool.num_kv_heads, harness.pool.head_dim
    ctx = harness.context(rows, extend_lens)
    q = torch.randn(ctx.num_tokens, num_heads, head_dim)
    k, v = torch.randn(2, ctx.num_tokens, num_kv_heads, head_dim)
    out = attention(q, k, v, ctx, layer_id=1, scaling=scale, sliding_window=window)
    assert torch.equal(harness.pool.k_buffers[1][ctx.out_cache_loc], k)
    assert torch.equal(harness.pool.v_buffers[1][ctx.out_cache_loc], v)
    start = 0
    for row, prefix, n in zip(rows, ctx.prefix_lens_cpu, extend_lens):
        seq_k, seq_v = full_kv.setdefault(row, (torch.empty(0, num_kv_heads, head_dim),) * 2)
        seq_k, seq_v = torch.cat([seq_k, k[start:start + n]]), torch.cat([seq_v, v[start:start + n]])
        full_kv[row] = (seq_k, seq_v)
        expected = _naive_attention(q[start:start + n], seq_k, seq_v, scale, prefix, window)
        torch.testing.assert_close(out[start:start + n], expected, atol=1e-5, rtol=1e-5)
        start += n


@pytest.mark.parametrize("window", [None, 4])
def test_attention_mixed_prefill_chunks_and_decode_match_naive(window):
    torch.manual_seed(6)
    harness = KVHarness(num_layers=2, num_kv_heads=2, head_dim=8)
    rows = [harness.new_request() for _ in range(4)]
    full_kv, scale = {}, 0.3
    _run_step(harness, full_kv, rows[:3], [5, 1, 9], scale, window)            # fresh prefills
    _run_step(harness, full_kv, rows, [1, 6, 1, 3], scale, window)             # decode + chunks + new
    _run_step(harness, full_kv, rows, [1, 1, 1, 1], scale, window)             # pure decode
    _run_step(harness, full_kv, [rows[2], rows[0]], [1, 1], scale, window)     # decode, reordered
    _run_step(harness, full_kv, [rows[3]], [7], scale, window)                 # one long chunk


def test_attention_decode_batch_of_very_different_lengths():
    torch.manual_seed(7)
    harness = KVHarness(num_layers=2, num_kv_heads=1, head_dim=16)
    rows = [harness.new_request() for _ in range(3)]
    full_kv = {}
    _run_step(harness, full_kv, rows, [1, 40, 13], 0.25, num_heads=3)
    for _ in range(3):
        _run_step(harness, full_kv, rows, [1, 1, 1], 0.25, num_heads=3)


def test_pdl_is_off_off_cuda_and_its_launch_keywords():
    """Programmatic dependent launch only for CUDA tensors (never the CPU or the interpreter);
    the launch keywords follow the kernel's USE_PDL."""
    from rollserve.kernels.dispatch import pdl_launch, use_pdl

    assert not use_pdl(torch.zeros(2))
    assert pdl_launch(False) == {} and pdl_launch(True) == {"launch_pdl": True}
