"""Speculative sampling keeps the target distribution: chi-square over many draws on a tiny
vocabulary, with a deliberately bad draft distribution (and with one-hot NGRAM-style drafts,
and through the Verifier with temperature / top_k / top_p / min_p); greedy acceptance is the
longest matching prefix."""

import torch

from rollserve.core.sampling_params import SamplingParams
from rollserve.executor.sampler import Sampler
from rollserve.executor.spec_verify import Verifier, VerifyInput, greedy_accept, speculative_accept
from rollserve.kernels.sampling import filtered_probs

V, K, N = 6, 3, 60000
CHI2_999 = {3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458}  # chi-square critical values at p = 0.001, by degrees of freedom


def chi_square(tokens: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic of the token counts against probs (bins with p = 0 must be empty)."""
    counts = torch.bincount(tokens, minlength=probs.numel()).double()
    expected = probs.double() * tokens.numel()
    assert counts[expected == 0].sum() == 0, "drew a token the target gives probability 0"
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_accept_reject_keeps_target_distribution_with_a_bad_draft():
    torch.manual_seed(0)  # Dirichlet draws from the global generator: a fixed target, not a flaky one
    gen = torch.Generator().manual_seed(0)
    p_rows = torch.distributions.Dirichlet(torch.ones(V)).sample((K + 1,))  # target per position
    p_rows[2, 4] = 0.0  # a token the target never picks at position 2 ...
    p_rows[2] /= p_rows[2].sum()
    q_rows = torch.tensor([[0.7, 0.02, 0.02, 0.02, 0.02, 0.22]] * K)  # ... a draft far from p
    q_rows[2] = torch.tensor([0.05, 0.05, 0.05, 0.05, 0.75, 0.05])  # ... that proposes it often
    drafts = torch.multinomial(q_rows, N, replacement=True, generator=gen).T  # [N, K]
    p = p_rows.expand(N, K + 1, V)
    q = q_rows.expand(N, K, V)
    uniform = torch.rand(N, K, generator=gen)
    noise = -torch.rand(N, V, generator=gen).log()
    accepted, nxt = speculative_accept(p, drafts, torch.full((N,), K), uniform, noise, q)
    # the committed chain: drafts[:accepted] then nxt; position j's token is distributed as
    # p_j (the target here does not depend on the context, so each position is checked alone)
    chain = torch.cat([drafts, torch.zeros(N, 1, dtype=torch.int64)], dim=1)
    chain[torch.arange(N), accepted] = nxt
    for j in range(K + 1):
        reached = accepted >= j
        stat = chi_square(chain[reached, j], p_rows[j])
        df = int((p_rows[j] > 0).sum()) - 1
        assert stat < CHI2_999[df], (j, stat)
    # the bad draft is rejected often, yet not always
    assert 0.05 < accepted.float().mean() / K < 0.9


def test_one_hot_drafts_keep_target_distribution():
    """NGRAM's drafts have no distribution (q one-hot on the draft): keep x with p(x)."""
    gen = torch.Generator().manual_seed(1)
    p_rows = torch.distributions.Dirichlet(torch.ones(V) * 0.7).sample((K + 1,))
    drafts = torch.tensor([[1, 3, 3]]).expand(N, K)
    uniform = torch.rand(N, K, generator=gen)
    noise = -torch.rand(N, V, generator=gen).log()
    accepted, nxt = speculative_accept(p_rows.expand(N, K + 1, V), drafts, torch.full((N,), K),
                                       uniform, noise)
    first = torch.where(accepted > 0, drafts[:, 0], nxt)
    assert chi_square(first, p_rows[0]) < CHI2_999[V - 1]
    assert abs(float((accepted > 0).float().mean()) - float(p_rows[0, 1])) < 0.01


def test_verifier_filters_the_target_as_the_sampler_does():
    """temperature, top_k, top_p and min_p shape p before acceptance: the first committed
    token follows the filtered distribution the sampler would draw from."""
    logits_row = torch.tensor([1.2, 1.0, 0.8, 0.5, -4.0, -0.6])
    params = SamplingParams(temperature=0.9, top_k=5, top_p=0.95, min_p=0.05, max_new_tokens=8)
    params.normalize_and_validate()
    sampler = Sampler(V, "cpu", base_seed=3)
    verifier = Verifier(sampler, "scaled")
    n = 20000
    drafts = [int(logits_row.argmin()), 2]  # the first draft is filtered out: always rejected
    logits = logits_row.expand(n * 3, V).clone()
    inputs = [VerifyInput(params, [5, 5], [1], frozenset({0}), list(drafts), 3 * i)
              for i in range(n)]
    out = verifier.verify(logits, inputs, [False] * n)
    first = torch.tensor([tokens[0][0] for tokens in out])
    target = filtered_probs(logits_row.view(1, -1), [params])[0]
    assert (target == 0).sum() == 2  # top_k and top_p each cut a token
    assert chi_square(first, target) < CHI2_999[int((target > 0).sum()) - 1]
    assert all(len(tokens) == 1 for tokens in out)  # the filtered-out draft never holds


def test_greedy_accepts_the_longest_matching_prefix():
    target = torch.tensor([[5, 6, 7, 8], [5, 9, 7, 8], [1, 2, 3, 4], [5, 6, 7, 8]])
    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [2, 2, 3], [5, 6, 0]])
    accepted, nxt = greedy_accept(target, drafts, torch.tensor([3, 3, 3, 1]))
    assert accepted.tolist() == [3, 1, 0, 1]
    assert nxt.tolist() == [8, 9, 1, 6]
