"""MoE routing and expert GEMMs: the torch reference against a plain per-token loop (CPU), the
alignment of token copies by expert, and the Triton kernel against the reference (GPU)."""

import pytest
import torch
import torch.nn.functional as F

from rollserve.kernels.moe import RoutingSpec, fused_moe_torch, moe_align, select_experts


def _per_token(x, w13, w2, weights, ids):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), ids[t].tolist()):
            gate, up = (w13[e] @ x[t]).chunk(2)
            out[t] += w * (w2[e] @ (F.silu(gate) * up))
    return out


def _inputs(tokens, hidden, inter, experts, top_k, dtype=torch.float32, device="cpu"):
    x = torch.randn(tokens, hidden, dtype=dtype, device=device)
    w13 = torch.randn(experts, 2 * inter, hidden, dtype=dtype, device=device) / hidden ** 0.5
    w2 = torch.randn(experts, hidden, inter, dtype=dtype, device=device) / inter ** 0.5
    logits = torch.randn(tokens, experts, device=device)
    weights, ids = select_experts(logits, RoutingSpec(top_k=top_k))
    return x, w13, w2, weights, ids


def test_reference_equals_per_token_loop():
    x, w13, w2, weights, ids = _inputs(9, 16, 24, 6, 2)
    torch.testing.assert_close(fused_moe_torch(x, w13, w2, weights, ids),
                               _per_token(x, w13, w2, weights, ids), atol=1e-5, rtol=1e-5)


def test_grouped_routing_picks_only_from_the_best_groups():
    logits = torch.randn(50, 16)
    bias = torch.randn(16)
    spec = RoutingSpec(top_k=4, scoring="sigmoid", num_groups=4, topk_groups=2, group_score="top2",
                       scaling_factor=2.0)
    weights, ids = select_experts(logits, spec, bias)
    choice = (logits.sigmoid() + bias).view(50, 4, 4)
    best_groups = choice.topk(2, dim=-1)[0].sum(-1).topk(2, dim=-1)[1]
    for t in range(50):
        assert set((ids[t] // 4).tolist()) <= set(best_groups[t].tolist())
    torch.testing.assert_close(weights.sum(-1), torch.full((50,), 2.0))  # renormalised, scaled
    # the bias changes the choice, not the weights: those are the unbiased sigmoid scores
    raw = logits.sigmoid().gather(1, ids)
    torch.testing.assert_close(weights, 2.0 * raw / raw.sum(-1, keepdim=True))


def test_moe_align_groups_copies_by_expert_in_padded_blocks():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [2, 3]])
    sorted_ids, block_expert = moe_align(ids, 5, 4)
    flat = ids.reshape(-1)
    sentinel = flat.numel()
    for b, expert in enumerate(block_expert.tolist()):
        block = [c for c in sorted_ids[4 * b:4 * b + 4].tolist() if c != sentinel]
        if expert < 0:
            assert not block
        assert all(flat[c] == expert for c in block)
    real = sorted(c for c in sorted_ids.tolist() if c != sentinel)
    assert real == list(range(sentinel))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tokens,hidden,inter,experts,top_k,dtype", [
    (1, 256, 128, 8, 2, torch.bfloat16), (7, 200, 96, 16, 4, torch.float16),
    (300, 512, 256, 64, 8, torch.bfloat16), (64, 128, 64, 4, 1, torch.float32)])
def test_triton_kernel_matches_reference(tokens, hidden, inter, experts, top_k, dtype):
    pytest.importorskip("triton")
    from rollserve.kernels.fused_moe_triton import fused_moe_triton

    x, w13, w2, weights, ids = _inputs(tokens, hidden, inter, experts, top_k, dtype, "cuda")
    out = fused_moe_triton(x, w13, w2, weights, ids)
    ref = fused_moe_torch(x.float(), w13.float(), w2.float(), weights, ids)
    error = (out.float() - ref).norm() / ref.norm()
    assert error < (2e-2 if dtype != torch.float32 else 1e-2), error


def _expert_parallel_sum(moe, x, w13, w2, weights, ids, ranks):
    """Each rank's experts (ids remapped, the others dropped) summed: the all-reduce's result."""
    from rollserve.executor.layers.moe_parallel import ExpertLayout

    per = w13.shape[0] // ranks
    total = torch.zeros_like(x)
    for r in range(ranks):
        layout = ExpertLayout(w13.shape[0], w2.shape[2], r * per, per, 0, w2.shape[2])
        part = slice(r * per, (r + 1) * per)
        total += moe(x, w13[part], w2[part], weights, layout.local_ids(ids), dropped=True)
    return total


def test_expert_parallel_parts_add_up_to_the_whole():
    x, w13, w2, weights, ids = _inputs(11, 16, 24, 6, 2)
    split = _expert_parallel_sum(fused_moe_torch, x, w13, w2, weights, ids, ranks=3)
    torch.testing.assert_close(split, fused_moe_torch(x, w13, w2, weights, ids))


def test_moe_align_skips_copies_of_another_ranks_experts():
    ids = torch.tensor([[0, 2], [2, 1], [2, 2]])  # 2 = "not on this rank" with 2 experts
    sorted_ids, block_expert = moe_align(ids, 2, 4)
    kept = {c for c, e in zip(sorted_ids.view(-1, 4).tolist(), block_expert.tolist()) if e >= 0
            for c in c}
    assert kept - {ids.numel()} == {0, 3}  # copies routed to experts 0 and 1 only


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_expert_parallel_parts_add_up():
    pytest.importorskip("triton")
    from rollserve.kernels.fused_moe_triton import fused_moe_triton

    x, w13, w2, weights, ids = _inputs(37, 128, 64, 8, 2, torch.float32, "cuda")
    split = _expert_parallel_sum(fused_moe_triton, x, w13, w2, weights, ids, ranks=2)
    ref = fused_moe_torch(x, w13, w2, weights, ids)
    assert (split - ref).norm() / ref.norm() < 1e-2
