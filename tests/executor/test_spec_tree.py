"""The tree accept rule: greedy follows the target's argmax down the tree (exactly greedy
decoding); sampling at temperature 1 keeps the target distribution (chi-square over many
draws on a tiny vocabulary, through the Verifier), also for a node whose children are all
likely to be rejected; committed logprobs are the path's rows."""

from collections import Counter

import torch

from rollserve.core.sampling_params import SamplingParams
from rollserve.executor.sampler import Sampler
from rollserve.executor.spec_tree import tree_accept_greedy, tree_residual, tree_walk_sampled
from rollserve.executor.spec_verify import Verifier, VerifyInput

V = 6
# rows [root, nodes...]: root -> 1 (token 1), 2 (token 3); 1 -> 3 (token 2), 4 (token 4); 2 -> 5 (token 0)
PARENTS = [-1, 0, 0, 1, 1, 2]
DRAFTS = [1, 3, 2, 4, 0]
CHI2_999_DF15 = 37.697  # chi-square critical value at p = 0.001, 15 degrees of freedom


def _params(**kw):
    params = SamplingParams(max_new_tokens=8, **kw)
    params.normalize_and_validate()
    return params


def test_greedy_walk_follows_the_argmax():
    tokens = [0] + DRAFTS
    assert tree_accept_greedy([3, 4, 0, 5, 5, 2], PARENTS, tokens) == ([0, 2, 5], 2)
    assert tree_accept_greedy([1, 4, 0, 5, 1, 2], PARENTS, tokens) == ([0, 1, 4], 1)
    assert tree_accept_greedy([5, 4, 0, 5, 1, 2], PARENTS, tokens) == ([0], 5)


def test_sampled_walk_and_residual():
    p_child = [0.0, 0.5, 0.3, 0.2, 0.2, 1.0]
    # child 1 rejected (0.9 * 1 >= 0.5), child 2 accepted (0.5 * 0.5 < 0.3); its child 5 too
    assert tree_walk_sampled(p_child, PARENTS, [0] + DRAFTS, [0, 0.9, 0.5, 0, 0, 0.1]) == ([0, 2, 5], [])
    assert tree_walk_sampled(p_child, PARENTS, [0] + DRAFTS, [0, 0.9, 0.9, 0, 0, 0]) == ([0], [1, 2])
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    out = tree_residual(p, [[0, 1], [2]])
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.0]]))  # row 0: all lost, keeps p


def test_verifier_tree_keeps_the_target_distribution():
    """Joint law of the first two committed tokens: p_root(a) * p_a(b) where a is a root child
    (its row's distribution follows), p_root(a) alone otherwise (the step ends with a)."""
    gen = torch.Generator().manual_seed(5)
    logits_rows = torch.randn(len(PARENTS), V, generator=gen) * 1.5
    logits_rows[0, 1] += 1.5  # the first child is likely, the second is not
    n = 20000
    sampler = Sampler(V, "cpu", base_seed=11)
    verifier = Verifier(sampler, "scaled")
    params = _params(temperature=1.0)
    inputs = [VerifyInput(params, [5, 5], [1], frozenset(), list(DRAFTS), len(PARENTS) * i,
                          parents=list(PARENTS)) for i in range(n)]
    out = verifier.verify(logits_rows.repeat(n, 1), inputs, [False] * n)
    counts = Counter(tuple(t for t, _ in tokens[:2]) if tokens[0][0] in (1, 3) else (tokens[0][0],)
                     for tokens in out)
    p = torch.softmax(logits_rows, dim=-1)
    expected = {}
    for a in range(V):
        if a in (1, 3):
            row = 1 if a == 1 else 2
            expected.update({(a, b): float(p[0, a] * p[row, b]) for b in range(V)})
        else:
            expected[(a,)] = float(p[0, a])
    assert set(counts) <= set(expected)
    stat = sum((counts.get(k, 0) - n * e) ** 2 / (n * e) for k, e in expected.items())
    assert len(expected) - 1 == 15 and stat < CHI2_999_DF15
    assert max(len(tokens) for tokens in out) == 3  # some steps accept a depth-2 node, then draw


def test_verifier_tree_greedy_and_path_logprobs():
    logits_rows = torch.full((len(PARENTS), V), -2.0)
    for row, best in enumerate([3, 4, 0, 5, 5, 2]):
        logits_rows[row, best] = 3.0
    verifier = Verifier(Sampler(V, "cpu", base_seed=0), "raw")
    inp = VerifyInput(_params(temperature=0.0), [5], [], frozenset(), list(DRAFTS), 0,
                      parents=list(PARENTS))
    [tokens] = verifier.verify(logits_rows, [inp], [True])
    assert [t for t, _ in tokens] == [3, 0, 2]  # nodes 2, 5, then row 5's argmax
    for (token, lp), row in zip(tokens, [0, 2, 5]):
        torch.testing.assert_close(lp, torch.log_softmax(logits_rows[row], -1))
