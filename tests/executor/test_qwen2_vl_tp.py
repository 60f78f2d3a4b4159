"""Qwen2-VL / Qwen2.5-VL over 2 tensor-parallel ranks (gloo on CPU): the language model split,
the vision tower whole on every rank. Each rank, fed the same images, computes what one rank
does (greedy tokens and logprobs, one image and two of different sizes, packed prefill and
decode with M-RoPE deltas), serves a repeated image from its own feature cache, and a
vision-tower weight write reaches every rank's tower (its cached features go stale). The same
with --mm-enable-dp-encoder (vision_dp.py): each rank encodes a share of the images and the
ranks all-gather the features."""

from __future__ import annotations

import pytest
import torch

from rollserve.core.batch import ScheduleBatch
from rollserve.executor.model_loader import load_model
from rollserve.executor.multimodal import MultimodalRunner
from tests.executor.model_harness import ModelHarness
from tests.executor.test_multimodal import _entry, _req
from tests.tiny_vlm import random_image
from tests.tp_ranks import run_on_ranks

pytestmark = pytest.mark.multiprocess

DECODE_STEPS = 3
TOWER_TENSOR = "model.visual.merger.mlp.2.bias"  # transformers 5's name, as trainers push it


def _forward(model, harness, runner, reqs, tokens, prefill):
    """One packed forward of `tokens` (per request) through the runner's multimodal inputs."""
    rows = [r.req_pool_idx for r in reqs]
    ctx = harness.context(rows, [len(t) for t in tokens])
    if prefill:
        ctx.mm = runner.prepare(ScheduleBatch([_entry(r, 0, len(r.input_ids)) for r in reqs]))
    ids = torch.tensor([t for seq in tokens for t in seq], dtype=torch.int64)
    with torch.inference_mode():
        logits = model.compute_logits(model(ids, ctx.positions, ctx))
    return list(logits.split([len(t) for t in tokens]))


def vlm_run(folder: str, split_encoder: bool = False) -> dict:
    """Greedy prefill + decode of a one-image and a two-image request; then the two-image
    prompt again (feature cache), then after a tower weight write (encoded anew)."""
    from transformers import AutoConfig

    from rollserve.core.tokenizer import load_tokenizer
    from rollserve.frontend.multimodal import ImageProcessor

    model = load_model(folder, torch.float32, "cpu")
    tokenizer = load_tokenizer(folder)
    images = ImageProcessor(folder, AutoConfig.from_pretrained(folder), tokenizer)
    runner = MultimodalRunner(model, torch.device("cpu"), 16, split_encoder=split_encoder)
    harness = ModelHarness(model, shuffle_slots=False)
    small, large = random_image(90, 60, 3), random_image(140, 120, 4)
    reqs = [_req("one", harness.new_request(), tokenizer, images, [large]),
            _req("two", harness.new_request(), tokenizer, images, [small, large])]
    logits = _forward(model, harness, runner, reqs, [r.input_ids for r in reqs], prefill=True)
    logprobs = [torch.log_softmax(x[-1:], -1) for x in logits]
    tokens = [[int(x[-1].argmax())] for x in logits]
    for _ in range(DECODE_STEPS):
        logits = _forward(model, harness, runner, reqs, [[t[-1]] for t in tokens], prefill=False)
        logprobs += [torch.log_softmax(x, -1) for x in logits]
        for seq, x in zip(tokens, logits):
            seq.append(int(x[-1].argmax()))
    first_encoded = runner.images_encoded
    again = [_req("again", harness.new_request(), tokenizer, images, [small, large])]
    cached = _forward(model, harness, runner, again, [again[0].input_ids], prefill=True)[0][-1]
    cache_hit = runner.images_encoded == first_encoded
    bias = model.model.visual.merger.mlp[2].bias
    model.load_weights([(TOWER_TENSOR, bias.detach() + 1.0)])
    again = [_req("after", harness.new_request(), tokenizer, images, [small, large])]
    updated = _forward(model, harness, runner, again, [again[0].input_ids], prefill=True)[0][-1]
    return {"tokens": tokens, "logprobs": torch.cat(logprobs), "first_encoded": first_encoded,
            "cache_hit": cache_hit, "encoded_after_update": runner.images_encoded - first_encoded,
            "cached_logits": cached, "updated_logits": updated}


def vlm_runs(folders: dict) -> dict:
    return {(arch, split): vlm_run(folder, split)
            for arch, folder in folders.items() for split in (False, True)}


@pytest.fixture(scope="module")
def rank_runs(tiny_vlms):
    """Both models on both ranks: one spawn of the ranks for the two tests."""
    return run_on_ranks(vlm_runs, 2, dict(tiny_vlms))


@pytest.fixture(scope="module")
def one_rank(tiny_vlms):
    return {arch: vlm_run(folder) for arch, folder in tiny_vlms.items()}


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("split_encoder", [False, True], ids=["replicated", "dp_encoder"])
def test_tp2_matches_one_rank_with_images(one_rank, rank_runs, arch, split_encoder):
    want = one_rank[arch]
    assert want["first_encoded"] == 2 and want["cache_hit"] and want["encoded_after_update"] == 2
    for got in (ranks[arch, split_encoder] for ranks in rank_runs):
        assert got["tokens"] == want["tokens"]
        assert torch.allclose(got["logprobs"], want["logprobs"], atol=1e-4, rtol=0)
        # every rank got each distinct image's features once (encoded, or from the rank that
        # encoded it), then served the repeat from its own cache
        assert got["first_encoded"] == 2 and got["cache_hit"]
        # the tower write reached this rank: features encoded anew, answer as one rank's
        assert got["encoded_after_update"] == 2
        assert torch.allclose(got["updated_logits"], want["updated_logits"], atol=1e-4, rtol=0)
        assert not torch.allclose(got["updated_logits"], got["cached_logits"], atol=1e-3, rtol=0)
