"""rollserve.rollout.parity: the report on a hand-computed case, and the engine's logprobs
against a transformers forward of the same tiny checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import rollserve
from rollserve.rollout.parity import logprob_parity, parity_report, trainer_logprobs
from rollserve.rollout.sample import sample_from_result

PROMPTS = [[504, 3458, 282, 4649], [314, 253, 1789, 30, 1073, 2880, 13]]


def test_report_by_hand():
    report = parity_report([[-1.0, -2.0], [-0.5]], [[-1.1, -2.0], [-0.4]])
    assert report["sequences"] == 2 and report["tokens"] == 3
    assert report["mean_abs_diff"] == pytest.approx(0.2 / 3)
    assert report["max_abs_diff"] == pytest.approx(0.1)
    assert report["mean_diff"] == pytest.approx(0.0)
    # r = trainer - engine = -0.1, 0, 0.1: mean of exp(r) - 1 - r
    expected = (math.exp(-0.1) - 0.9 + 0 + math.exp(0.1) - 1.1) / 3
    assert report["kl"] == pytest.approx(expected) and report["kl"] > 0
    with pytest.raises(ValueError, match="sequence 0"):
        parity_report([[-1.0]], [[-1.0, -2.0]])


def test_engine_matches_a_transformers_forward(tiny_models):
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32).eval()
    params = {"temperature": 0.7, "max_new_tokens": 6, "ignore_eos": True, "seed": 5}
    with rollserve.Engine(tiny_models["llama"], max_total_tokens=2048, log_level="warning") as engine:
        results = engine.generate(input_ids=PROMPTS, sampling_params=params, return_logprob=True)
    samples = [sample_from_result(r, i, 0) for i, r in enumerate(results)]
    # batched with padding == one sequence at a time, computed here by hand
    padded = trainer_logprobs(model, PROMPTS, [s.output_ids for s in samples], 0.7)
    for prompt, s, lps in zip(PROMPTS, samples, padded):
        ids = torch.tensor([prompt + s.output_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float() / 0.7
        own = torch.log_softmax(logits, -1)[len(prompt) - 1:-1].gather(
            1, torch.tensor(s.output_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lps), own, atol=1e-5)
    report = logprob_parity(model, PROMPTS, [[s] for s in samples], temperature=0.7)
    assert report["tokens"] == 12
    assert report["max_abs_diff"] < 1e-4 and report["kl"] < 1e-8, report
