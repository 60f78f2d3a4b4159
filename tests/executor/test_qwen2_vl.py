"""Qwen2-VL / Qwen2.5-VL against transformers on tiny random checkpoints: the vision tower, the
M-RoPE positions, and the whole engine (greedy tokens and logprobs, one image and two of
different sizes, chunked prefill cutting through images, prefix cache on and off), the image
hash in the radix cache, and a weight update reaching the vision tower."""

from __future__ import annotations

import base64
import io
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoModelForImageTextToText

import rollserve
from rollserve.core.multimodal import mrope_positions
from rollserve.executor.model_loader import load_model
from tests.tiny_vlm import random_image

PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
GREEDY = {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}


def _b64(image, data_url: bool = False) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    return "data:image/png;base64," + text if data_url else text


def _images():
    return [random_image(90, 60, 0), random_image(140, 120, 1)]  # 2x3 and 4x5 merged tokens


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_tower_matches_transformers(tiny_vlms, arch):
    folder = tiny_vlms[arch]
    pixels = AutoImageProcessor.from_pretrained(folder)(images=_images(), return_tensors="pt")
    ref = AutoModelForImageTextToText.from_pretrained(folder).eval()
    ours = load_model(folder, torch.float32, "cpu")
    grids = [tuple(g) for g in pixels["image_grid_thw"].tolist()]
    with torch.no_grad():
        got = ours.encode_images(pixels["pixel_values"], grids)
        want = ref.model.get_image_features(pixels["pixel_values"],
                                            pixels["image_grid_thw"]).pooler_output
    assert [g.shape for g in got] == [w.shape for w in want] == [(6, 64), (20, 64)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


def test_mrope_positions_match_transformers(tiny_vlms):
    ref = AutoModelForImageTextToText.from_pretrained(tiny_vlms["qwen2_vl"]).eval()
    image_id = ref.config.image_token_id
    # text, a 2x3-token image, text, a 4x5-token image, text
    ids = [5, 6] + [image_id] * 6 + [7, 8, 9] + [image_id] * 20 + [10]
    grids = [(1, 4, 6), (1, 8, 10)]
    want, want_delta = ref.model.get_rope_index(
        torch.tensor([ids]), mm_token_type_ids=(torch.tensor([ids]) == image_id).int(),
        image_grid_thw=torch.tensor(grids))
    got, delta = mrope_positions(len(ids), [(2, grids[0]), (11, grids[1])], merge=2)
    assert got.tolist() == want[:, 0].tolist()
    assert delta == int(want_delta)


def _transformers_greedy(folder, ids, images, steps):
    ref = AutoModelForImageTextToText.from_pretrained(folder).eval()
    pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")
    inp = torch.tensor([ids])
    out = ref.generate(input_ids=inp, attention_mask=torch.ones_like(inp),
                       pixel_values=pixels["pixel_values"], image_grid_thw=pixels["image_grid_thw"],
                       mm_token_type_ids=(inp == ref.config.image_token_id).int(),
                       max_new_tokens=steps, do_sample=False, output_scores=True,
                       return_dict_in_generate=True)
    tokens = out.sequences[0, len(ids):].tolist()
    logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, tokens)]
    return tokens, logprobs


def _check_parity(folder, result, images):
    ids = result["meta_info"]["expanded_input_ids"]
    tokens, logprobs = _transformers_greedy(folder, ids, images, GREEDY["max_new_tokens"])
    assert result["output_ids"] == tokens
    ours = [lp for lp, _tok, *_ in result["meta_info"]["output_token_logprobs"]]
    assert max(abs(a - b) for a, b in zip(ours, logprobs)) < 1e-4


def test_engine_parity_with_cache_and_chunks_qwen2_vl(tiny_vlms):
    """Prefix cache on, 16-token prefill chunks (both images are cut by chunk boundaries):
    one image, two of different sizes, the same request again (a cache hit through its
    images), and a different image after the same text (no cached image token)."""
    folder = tiny_vlms["qwen2_vl"]
    one, two = _images()
    with rollserve.Engine(folder, max_total_tokens=4096, chunked_prefill_size=16, device="cpu",
                          log_level="warning") as engine:
        text2 = f"Compare {PLACEHOLDER} with {PLACEHOLDER}, then"
        first = engine.generate(text2, GREEDY, image_data=[_b64(one), _b64(two, True)],
                                return_logprob=True)
        again = engine.generate(text2, GREEDY, image_data=[_b64(one), _b64(two, True)],
                                return_logprob=True)
        single = engine.generate(f"Describe {PLACEHOLDER} now", GREEDY, image_data=_b64(two),
                                 return_logprob=True)
        other = engine.generate(f"Describe {PLACEHOLDER} now", GREEDY,
                                image_data=_b64(random_image(140, 120, 7)), return_logprob=True)
    _check_parity(folder, first, [one, two])
    _check_parity(folder, single, [two])
    _check_parity(folder, other, [random_image(140, 120, 7)])
    assert again["output_ids"] == first["output_ids"]
    prompt_len = len(first["meta_info"]["expanded_input_ids"])
    assert first["meta_info"]["cached_tokens"] == 0 and again["meta_info"]["cached_tokens"] == prompt_len - 1
    # same text, different image: only the tokens before the image may come from the cache
    image_start = other["meta_info"]["expanded_input_ids"].index(
        engine.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert other["meta_info"]["cached_tokens"] <= image_start
    assert other["output_ids"] != single["output_ids"] or other["meta_info"]["output_token_logprobs"] \
        != single["meta_info"]["output_token_logprobs"]


def test_engine_parity_without_cache_and_weight_update_qwen2_5_vl(tiny_vlms, tmp_path):
    """Prefix cache off; then an update_weights_from_disk that changes only the vision tower
    changes the answer, and updating back restores it (cached features are not reused); an
    update_weights_from_tensor of one vision tensor (transformers 5's name) changes it again."""
    folder = tiny_vlms["qwen2_5_vl"]
    one, two = _images()
    changed = str(tmp_path / "changed")
    shutil.copytree(folder, changed)
    weights = os.path.join(changed, "model.safetensors")
    tensors = load_file(weights)
    for name in tensors:
        if "visual" in name and name.endswith("weight") and tensors[name].dim() > 1:
            tensors[name] = tensors[name] * 1.5
    save_file(tensors, weights, metadata={"format": "pt"})
    text = f"{PLACEHOLDER} and {PLACEHOLDER}:"
    with rollserve.Engine(folder, max_total_tokens=4096, disable_radix_cache=True, device="cpu",
                          log_level="warning") as engine:
        def ask():
            return engine.generate(text, GREEDY, image_data=[_b64(two), _b64(one)],
                                   return_logprob=True)

        before = ask()
        assert engine.update_weights_from_disk(changed)["success"]
        after = ask()
        assert engine.update_weights_from_disk(folder)["success"]
        restored = ask()
        # a trainer's push in transformers 5's names reaches the tower too; then a release /
        # resume of the weights keeps it
        merger = tensors["visual.merger.mlp.2.bias"]
        pushed = engine.update_weights_from_tensor([("model.visual.merger.mlp.2.bias", merger + 1.0)])
        assert pushed["success"], pushed
        assert engine.release_memory_occupation(["weights"])["success"]
        assert engine.resume_memory_occupation(["weights"])["success"]
        bumped = ask()
    _check_parity(folder, before, [two, one])
    lps = lambda r: [e[0] for e in r["meta_info"]["output_token_logprobs"]]  # noqa: E731
    assert lps(after) != lps(before)
    assert restored["output_ids"] == before["output_ids"]
    assert max(abs(a - b) for a, b in zip(lps(restored), lps(before))) < 1e-5
    assert lps(bumped) != lps(restored)
