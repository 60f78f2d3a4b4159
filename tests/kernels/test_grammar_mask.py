"""The grammar bitmask apply (kernels/grammar_mask.py): xgrammar's CPU kernel and the torch
reference give the dense answer, on chosen rows only, with logit columns past the bitmask
(lm_head padding) masked; on CUDA the reference runs on the device."""

import pytest
import torch

from rollserve.kernels.grammar_mask import (allowed_tokens, apply_token_bitmask,
                                            apply_token_bitmask_torch)


def dense_answer(logits, allowed, rows):
    out = logits.clone()
    for i in rows:
        out[i] = out[i].masked_fill(~allowed[i], float("-inf"))
    return out


def random_case(n, vocab, covered, seed=0):
    gen = torch.Generator().manual_seed(seed)
    allowed = torch.rand(n, covered, generator=gen) < 0.3
    words = (covered + 31) // 32
    padded = torch.zeros(n, words * 32, dtype=torch.bool)
    padded[:, :covered] = allowed
    weights = (1 << torch.arange(32, dtype=torch.int64))
    bitmask = (padded.view(n, words, 32).long() * weights).sum(-1)
    bitmask = torch.where(bitmask >= 2**31, bitmask - 2**32, bitmask).to(torch.int32)
    full = torch.zeros(n, vocab, dtype=torch.bool)
    full[:, :covered] = allowed
    return torch.randn(n, vocab, generator=gen), bitmask, full


@pytest.mark.parametrize("vocab,covered", [(1000, 1000), (1003, 1003), (1100, 1003)])
def test_cpu_kernel_and_reference_match_the_dense_mask(vocab, covered):
    logits, bitmask, allowed = random_case(6, vocab, covered)
    assert torch.equal(allowed_tokens(bitmask, vocab), allowed)
    rows = [0, 2, 5]
    expected = dense_answer(logits, allowed, rows)
    for apply in (apply_token_bitmask, apply_token_bitmask_torch):
        got = logits.clone()
        apply(got, bitmask, rows)
        assert torch.equal(got, expected), apply.__name__


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_apply_matches_cpu():
    logits, bitmask, allowed = random_case(64, 128256, 128000, seed=1)
    rows = list(range(0, 64, 3))
    got = logits.cuda()
    apply_token_bitmask(got, bitmask, rows)
    assert torch.equal(got.cpu(), dense_answer(logits, allowed, rows))
