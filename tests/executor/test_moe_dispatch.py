"""The all-to-all token dispatch and combine (executor/layers/moe_dispatch.py) against the
one-process fused MoE over all experts: uneven token counts, a rank with no tokens, an
expert no token picks, a rank whose experts receive nothing (two gloo ranks), and one rank
alone (no group: every exchange is the identity)."""

from __future__ import annotations

import pytest
import torch

from rollserve.executor.layers.moe_dispatch import dispatch_combine
from rollserve.kernels.moe import fused_moe
from tests.tp_ranks import run_on_ranks

NUM_EXPERTS, TOP_K, HIDDEN, INTER = 6, 2, 16, 8
UNCHOSEN = 4  # no token of any rank picks it (rank 1 holds experts 3-5 at two ranks)


def make_case(seed: int, token_counts, experts):
    """Weights of all experts, and every rank's tokens, top-k ids (drawn from `experts`) and
    top-k weights; the same on every rank (one generator)."""
    g = torch.Generator().manual_seed(seed)
    w13 = torch.randn(NUM_EXPERTS, 2 * INTER, HIDDEN, generator=g) / HIDDEN ** 0.5
    w2 = torch.randn(NUM_EXPERTS, HIDDEN, INTER, generator=g) / INTER ** 0.5
    tokens = []
    for n in token_counts:
        x = torch.randn(n, HIDDEN, generator=g)
        picks = [torch.randperm(len(experts), generator=g)[:TOP_K] for _ in range(n)]
        ids = torch.tensor(experts)[torch.stack(picks)] if n else torch.empty(0, TOP_K, dtype=torch.long)
        weights = torch.randn(n, TOP_K, generator=g).softmax(dim=-1)
        tokens.append((x, weights, ids))
    return w13, w2, tokens


def dispatched(rank: int, size: int, w13, w2, x, weights, ids) -> torch.Tensor:
    per = NUM_EXPERTS // size
    mine13, mine2 = w13[rank * per:(rank + 1) * per], w2[rank * per:(rank + 1) * per]
    seen = []

    def run_local(rows, local_ids):
        seen.append(local_ids.tolist())
        ones = torch.ones(rows.shape[0], 1, dtype=rows.dtype)
        return fused_moe(rows, mine13, mine2, ones, local_ids.unsqueeze(1))

    out = dispatch_combine(x, weights, ids, NUM_EXPERTS, size, run_local)
    return out, seen


CASES = [  # (seed, every rank's token count, the experts tokens pick from)
    (0, (5, 3), [0, 1, 2, 3, 5]),  # uneven counts, expert 4 unchosen
    (1, (4, 0), [0, 1, 2, 3, 5]),  # rank 1 idle (DP attention's idle forward)
    (2, (3, 2), [0, 1, 2]),  # only rank 0's experts: rank 1 receives no row at all
    (3, (0, 0), [0, 1, 2, 3, 5]),  # nobody has a token
]


def on_rank():
    from rollserve.executor.parallel_state import group_rank, group_size

    rank, size = group_rank(), group_size()
    results = []
    for seed, counts, experts in CASES:
        w13, w2, tokens = make_case(seed, counts, experts)
        x, weights, ids = tokens[rank]
        got, seen = dispatched(rank, size, w13, w2, x, weights, ids)
        if x.shape[0] == 0:  # nothing to compare with (the reference needs a token)
            results.append((got.shape == x.shape, 0.0, seen))
            continue
        want = fused_moe(x, w13, w2, weights, ids)
        results.append((got.shape == want.shape, (got - want).abs().max().item(), seen))
    return results


@pytest.mark.multiprocess
def test_dispatch_and_combine_over_two_ranks_match_one_process():
    results = run_on_ranks(on_rank, 2, timeout_s=120)
    for rank, per_case in enumerate(results):
        for (seed, counts, experts), (same_shape, err, seen) in zip(CASES, per_case):
            assert same_shape and err < 1e-5, (rank, seed, err)
    # what the experts ran on: rank 1 got rows of experts 3 and 5 only (4 is unchosen), none
    # in the case where every token picked rank 0's experts, and no call without rows
    rank1_first = results[1][0][2]
    assert len(rank1_first) == 1 and set(rank1_first[0]) <= {0, 2} and UNCHOSEN - 3 not in rank1_first[0]
    assert results[1][2][2] == [] and results[0][3][2] == [] and results[1][3][2] == []
    # rank 0 served rows for rank 1's tokens too: more than its own 5 tokens' copies of 0-2
    w13, w2, tokens = make_case(0, (5, 3), [0, 1, 2, 3, 5])
    to_rank0 = sum(int((ids < 3).sum()) for _, _, ids in tokens)
    assert len(results[0][0][2][0]) == to_rank0


def test_one_rank_dispatch_is_the_fused_moe():
    w13, w2, tokens = make_case(0, (7,), [0, 1, 2, 3, 5])
    x, weights, ids = tokens[0]
    got, seen = dispatched(0, 1, w13, w2, x, weights, ids)
    assert (got - fused_moe(x, w13, w2, weights, ids)).abs().max().item() < 1e-5
    assert sorted(seen[0]) == sorted(ids.reshape(-1).tolist())  # every copy ran once


def empty_context(recorder, counts):
    """A forward context holding only what the MoE block reads under DP attention."""
    from rollserve.core.forward_context import ForwardContext

    none = torch.empty(0, dtype=torch.long)
    return ForwardContext(positions=none, out_cache_loc=none, req_pool_indices=none,
                          req_to_token=none, prefix_lens=none, extend_lens=none, seq_lens=none,
                          extend_start_loc=none, kv_pool=None, prefix_lens_cpu=[],
                          extend_lens_cpu=[], moe_recorder=recorder, dp_token_counts=counts)


def block_on_rank():
    """A DeepSeek-V3-like block (sigmoid grouped routing, correction bias, a shared expert)
    split over the ranks with the all-to-all dispatch, against the whole block in one process;
    the expert-distribution recorder counts this rank's tokens' choices only."""
    from rollserve.executor.expert_distribution import ExpertDistributionRecorder
    from rollserve.executor.layers.moe import SparseMoeBlock
    from rollserve.executor.parallel_state import (as_rank, group_rank, set_dp_attention,
                                                   set_expert_parallel, set_moe_a2a)
    from rollserve.kernels.moe import RoutingSpec

    set_expert_parallel(2)
    set_dp_attention(True)
    set_moe_a2a(True)
    rank = group_rank()
    spec = RoutingSpec(top_k=TOP_K, scoring="sigmoid", num_groups=2, topk_groups=1,
                       group_score="top2")
    build = lambda: SparseMoeBlock(HIDDEN, NUM_EXPERTS, INTER, spec, layer_id=0,
                                   shared_intermediate_size=INTER, correction_bias=True)
    with as_rank(0, 1):
        whole = build()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in whole.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    split = build()
    per = NUM_EXPERTS // 2
    with torch.no_grad():
        for name, p in split.named_parameters():
            source = dict(whole.named_parameters())[name]
            p.copy_(source[rank * per:(rank + 1) * per] if name.startswith("experts.") else source)
    results = []
    for counts in ((5, 3), (4, 0), (0, 0)):
        xs = [torch.randn(n, HIDDEN, generator=g) for n in counts]
        recorder = ExpertDistributionRecorder(1, NUM_EXPERTS, torch.device("cpu"))
        recorder.start()
        with torch.inference_mode():
            got = split.moe(xs[rank], empty_context(recorder, list(counts)))
            with as_rank(0, 1):
                want = whole.moe(xs[rank]) if counts[rank] else xs[rank]
                ids = whole.gate(xs[rank])[1] if counts[rank] else torch.empty(0, dtype=torch.long)
        mine = torch.bincount(ids.reshape(-1), minlength=NUM_EXPERTS)
        results.append(((got - want).abs().max().item() if counts[rank] else float(got.shape[0]),
                        torch.equal(recorder.counts[0], mine)))
    return results


@pytest.mark.multiprocess
def test_moe_block_with_the_dispatch_answers_as_one_process_and_records_its_own_tokens():
    for rank, per_case in enumerate(run_on_ranks(block_on_rank, 2, timeout_s=120)):
        for err, recorded in per_case:
            assert err < 1e-5 and recorded, (rank, per_case)
