"""The loglikelihoods behind multiple choice and perplexity (prompt logprobs of a
0-token /generate) equal a transformers forward pass on the same weights."""

from __future__ import annotations

import math

import pytest
import torch

from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.tasks.multiple_choice import MultipleChoiceTask
from rollserve.eval.tasks.perplexity import PerplexityTask
from rollserve.eval.tasks.requests import encode_pair


def reference_loglikelihood(model, context, continuation) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(context) + i - 1, token].item() for i, token in enumerate(continuation))


def test_multiple_choice_and_perplexity_match_transformers(client, eval_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    client.update_weights_from_disk(eval_model_dir, weight_version="reference")
    rows = [{"id": "a", "context": "Question: What is the capital of France?\nAnswer:",
             "choices": ["Paris", "Lyon", "a city in the north"], "gold": 0},
            {"id": "b", "context": "2 + 2 =", "choices": ["4", "five"], "gold": 0}]
    texts = [{"id": "t", "text": "Rivers carry water from the mountains to the sea."}]
    # batch_size 4: a call mixes questions with different context lengths
    ctx = EvalContext(client=client, settings=EvalSettings(batch_size=4))
    mc, ppl = run_tasks(ctx, [MultipleChoiceTask("mc", rows), PerplexityTask("ppl", texts)],
                        progress=False)

    tokenizer = AutoTokenizer.from_pretrained(eval_model_dir)
    model = AutoModelForCausalLM.from_pretrained(eval_model_dir, dtype=torch.float32).eval()
    for row, sample in zip(rows, mc.samples):
        expected = [reference_loglikelihood(model, *encode_pair(tokenizer, row["context"], " " + c))
                    for c in row["choices"]]
        assert sample["loglikelihoods"] == pytest.approx(expected, abs=1e-3)

    tokens = tokenizer.encode(texts[0]["text"], add_special_tokens=False)
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    total = reference_loglikelihood(model, [prefix], tokens)
    assert ppl.samples[0]["loglikelihood"] == pytest.approx(total, abs=1e-3)
    assert ppl.metrics["perplexity"] == pytest.approx(math.exp(-total / len(tokens)), rel=1e-4)
