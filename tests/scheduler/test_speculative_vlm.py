"""Speculative decoding on a VLM (tiny Qwen2-VL, M-RoPE): verify rows are several tokens per
request, at kv_len + i for a chain and kv_len + depth for a tree, plus the request's rope
delta (an image shifts the text positions after it). Greedy output equals plain decoding,
for batches of verify rows alone and for verify rows beside a prompt with an image."""

import base64
import dataclasses
import io
import random

import pytest

from rollserve.scheduler.speculative import SpeculativeScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.tiny_vlm import random_image


def image_request(folder, rid):
    """A repetitive prompt with an image before the text (a non-zero rope delta)."""
    from transformers import AutoConfig

    from rollserve.core.tokenizer import load_tokenizer
    from rollserve.frontend.multimodal import ImageProcessor

    tokenizer = load_tokenizer(folder)
    images = ImageProcessor(folder, AutoConfig.from_pretrained(folder), tokenizer)
    ids = tokenizer.encode("see " + images.placeholder + " then" + " one two three" * 4)
    buf = io.BytesIO()
    random_image(90, 60, 3).save(buf, format="PNG")
    expanded, mm = images.process(ids, [base64.b64encode(buf.getvalue()).decode()],
                                  "image_data", "text")
    return dataclasses.replace(request(expanded, rid=rid, temperature=0, max_new_tokens=14,
                                       ignore_eos=True), mm_inputs=mm)


def workload(folder):
    """Two text prompts at once (verify-only batches), then prompts with an image arriving
    (their prefills beside the verify rows, draft trees among them)."""
    rng = random.Random(0)  # three tokens in every order: each has several continuations
    text = [request([rng.choice((11, 12, 13)) for _ in range(30)], rid="t0", temperature=0,
                    max_new_tokens=14, ignore_eos=True),
            request([21, 22, 23] * 6, rid="t1", temperature=0, max_new_tokens=14,
                    ignore_eos=True)]
    return text, {step: [image_request(folder, f"img{step}")] for step in (2, 5, 6)}


@pytest.fixture(scope="module")
def plain(tiny_vlms):
    """workload()'s greedy tokens without speculation."""
    msgs, late = workload(tiny_vlms["qwen2_vl"])
    return {rid: r.output_ids for rid, r in run_all(make_scheduler(tiny_vlms["qwen2_vl"]), msgs,
                                                    arrivals=late).items()}


@pytest.mark.parametrize("breadth", [1, 10], ids=["chain", "tree"])
def test_vlm_speculation_equals_plain_decoding(tiny_vlms, plain, breadth):
    folder = tiny_vlms["qwen2_vl"]
    base = make_scheduler(folder)
    config = dataclasses.replace(base.config, speculative_algorithm="NGRAM",
                                 speculative_num_draft_tokens=6,
                                 speculative_ngram_max_bfs_breadth=breadth)
    spec = SpeculativeScheduler(config, base.runner, base.stop_checker.tokenizer,
                                base.eos_token_ids)
    mixed = []  # batches with a draft tree beside a prefill (positions from multimodal.py)
    forward = spec.runner.forward

    def spy(batch):
        mixed.append(any(e.tree_parents for e in batch.entries)
                     and any(not e.is_decode for e in batch.entries))
        return forward(batch)

    spec.runner.forward = spy
    msgs, late = workload(folder)
    got = {rid: r.output_ids for rid, r in run_all(spec, msgs, arrivals=late).items()}
    assert got == plain
    assert spec.stats.spec.draft_tokens > 0  # drafts were verified
    assert any(mixed) == (breadth > 1)


def test_draft_models_for_a_vlm_target_are_refused_by_name(tiny_vlms):
    """EAGLE heads read the target's text embeddings and 1-D positions: on a VLM they are
    refused at load with the flag named, not left to fail inside a step (NGRAM runs above)."""
    import torch

    from rollserve.executor.draft_models import load_draft_model

    runner = make_scheduler(tiny_vlms["qwen2_vl"]).runner
    for algorithm in ("EAGLE", "EAGLE3"):
        with pytest.raises(ValueError, match=f"speculative_algorithm {algorithm}: .*vision-language"):
            load_draft_model(algorithm, "unused", runner.model, torch.float32, torch.device("cpu"))
