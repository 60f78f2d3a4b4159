"""Tensor parallel on CPU (gloo): a model split over 2 and 4 ranks computes what one rank
does. Tiny configs: 4 query heads and 2 KV heads, so TP=2 splits the KV heads and TP=4
replicates each over two ranks; a vocabulary that does not divide checks the padding."""

from __future__ import annotations

import os

import pytest
import torch

from rollserve.executor.model_loader import load_model
from tests.executor.model_harness import ModelHarness
from tests.tiny_models import save_tiny_checkpoint, tiny_config
from tests.tp_ranks import run_on_ranks

pytestmark = pytest.mark.multiprocess

PROMPTS = [[5, 17, 301, 42, 9, 77, 1000], [8, 8, 999, 3]]  # ids < 1001: the odd-vocab model's
DECODE_STEPS = 3


def greedy_run(model_path: str, load_format: str = "auto"):
    """Prefill both prompts packed, then greedy decode steps; (tokens, logprobs of every row)."""
    harness = ModelHarness(load_model(model_path, torch.float32, "cpu", load_format),
                           shuffle_slots=False)
    rows = [harness.new_request() for _ in PROMPTS]
    logits = harness.forward(rows, PROMPTS)
    logprobs = [torch.log_softmax(x, dim=-1) for x in logits]
    tokens = [[int(x[-1].argmax())] for x in logits]
    for _ in range(DECODE_STEPS):
        logits = harness.forward(rows, [[t[-1]] for t in tokens])
        logprobs += [torch.log_softmax(x, dim=-1) for x in logits]
        for seq, x in zip(tokens, logits):
            seq.append(int(x[-1].argmax()))
    return tokens, torch.cat(logprobs)


@pytest.fixture(scope="module")
def odd_vocab_model(tmp_path_factory):
    """Llama with a vocabulary of 1001 (not divisible by 2 or 4) and untied embeddings."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama", 1001, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    out = str(tmp_path_factory.mktemp("odd_vocab"))
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_one_rank(tiny_models, arch, tp):
    tokens, logprobs = greedy_run(tiny_models[arch])
    for rank_tokens, rank_logprobs in run_on_ranks(greedy_run, tp, tiny_models[arch]):
        assert rank_tokens == tokens
        assert torch.allclose(rank_logprobs, logprobs, atol=1e-5, rtol=0)


def test_tp_pads_a_vocabulary_that_does_not_divide(odd_vocab_model):
    tokens, logprobs = greedy_run(odd_vocab_model)
    for rank_tokens, rank_logprobs in run_on_ranks(greedy_run, 4, odd_vocab_model):
        assert rank_tokens == tokens
        assert rank_logprobs.shape == logprobs.shape  # the padding rows are cut off
        assert torch.allclose(rank_logprobs, logprobs, atol=1e-5, rtol=0)


def rank_spec_and_param_shapes(model_path: str):
    model = load_model(model_path, torch.float32, "cpu")
    qkv = model.model.layers[0].self_attn.qkv_proj.weight.shape
    return model.checkpoint_spec(), tuple(qkv), model.num_kv_heads


def test_each_rank_holds_its_slice_but_reports_full_shapes(tiny_models):
    path = tiny_models["llama"]
    full_spec, full_qkv, _ = rank_spec_and_param_shapes(path)
    for spec, qkv, kv_heads in run_on_ranks(rank_spec_and_param_shapes, 4, path):
        assert spec == full_spec  # weight sync validates against the checkpoint's shapes
        assert kv_heads == 1
        assert qkv == (16 + 16 + 16, 64)  # 1 query head + its replicated K and V heads (dim 16)
    assert full_qkv == (64 + 32 + 32, 64)
