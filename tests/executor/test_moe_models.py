"""MoE and DeepSeek models against transformers on the same random weights saved as real
checkpoints: packed prefill, chunked prefill with a cached prefix, batched decode (float32)."""

import json
import os

import pytest
import torch

from rollserve.executor.model_loader import iterate_checkpoint, load_model
from tests.executor.model_harness import ModelHarness
from tests.executor.moe_checkpoints import VARIANTS, VOCAB, save_variant

ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for seed, variant in enumerate(VARIANTS):
        folder = str(tmp_path_factory.mktemp(variant))
        out[variant] = (folder, save_variant(variant, folder, seed))
    return out


def _reference_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()


def _prompts(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def _harness(checkpoints, variant):
    folder, hf_model = checkpoints[variant]
    return ModelHarness(load_model(folder, torch.float32, "cpu")), hf_model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prefill_chunked_prefill_and_decode_match_transformers(checkpoints, variant):
    harness, hf_model = _harness(checkpoints, variant)
    prompts = _prompts(1, [7, 1, 12])
    rows = [harness.new_request() for _ in prompts]
    # request 2 is prefilled in two chunks: the second sees its first chunk from the KV pool
    first = harness.forward(rows, [prompts[0], prompts[1], prompts[2][:5]])
    rest = harness.forward([rows[2]], [prompts[2][5:]])[0]
    chunked = torch.cat([first[2], rest])
    for prompt, logits in zip(prompts, [first[0], first[1], chunked]):
        reference = _reference_logits(hf_model, prompt)
        assert reference.std() > 0.5
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    sequences = [list(p) for p in prompts]
    last = [first[0][-1], first[1][-1], rest[-1]]
    for _ in range(4):  # greedy decode of the batch
        for seq, logits in zip(sequences, last):
            seq.append(int(logits.argmax()))
        outputs = harness.forward(rows, [[seq[-1]] for seq in sequences])
        for seq, logits in zip(sequences, outputs):
            torch.testing.assert_close(logits, _reference_logits(hf_model, seq)[-1:], atol=ATOL, rtol=0)
        last = [logits[-1] for logits in outputs]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_spec_is_the_saved_tensor_set(checkpoints, variant):
    folder, _ = checkpoints[variant]
    model = load_model(folder, torch.float32, "cpu")
    saved = {name: tuple(t.shape) for name, t in iterate_checkpoint(folder)}
    assert {name: shape for name, (shape, _) in model.checkpoint_spec().items()} == saved
