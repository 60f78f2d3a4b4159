"""A VLM replica over 2 tensor-parallel ranks end to end: rollserve.Engine --tp-size 2 with a
tiny Qwen2.5-VL (windowed vision tower). Rank 0 hands every rank the same requests, images
included (tp_sync.share_messages), each rank encodes them with its own whole tower, and the
answer is transformers' (greedy tokens, float32 logprobs within 1e-4) with prefill chunks
cutting through the images and a radix-cache hit through them; weight updates from disk
and from tensors reach every rank's tower (a stale tower on one rank would change the
split language model's sums)."""

from __future__ import annotations

import os
import shutil

import pytest
from safetensors.torch import load_file, save_file

import rollserve
from tests.executor.test_qwen2_vl import GREEDY, PLACEHOLDER, _b64, _check_parity, _images
from tests.tiny_vlm import random_image

pytestmark = pytest.mark.multiprocess


def _tower_scaled(folder: str, out: str) -> dict:
    """A copy of `folder` whose vision tower's matrices are 1.5x; the original's tensors."""
    shutil.copytree(folder, out)
    weights = os.path.join(out, "model.safetensors")
    original = load_file(weights)
    changed = {n: t * 1.5 if "visual" in n and n.endswith("weight") and t.dim() > 1 else t
               for n, t in original.items()}
    save_file(changed, weights, metadata={"format": "pt"})
    return original


def test_tp2_vlm_answers_as_transformers_and_updates_the_tower(tiny_vlms, tmp_path):
    folder = tiny_vlms["qwen2_5_vl"]
    changed = str(tmp_path / "changed")
    original = _tower_scaled(folder, changed)
    one, two = _images()
    other = random_image(70, 100, 9)
    text2 = f"Compare {PLACEHOLDER} with {PLACEHOLDER}, then"
    with rollserve.Engine(folder, tp_size=2, max_total_tokens=4096, chunked_prefill_size=16,
                          device="cpu", log_level="warning") as engine:
        def ask(images, text=text2):
            return engine.generate(text, GREEDY, image_data=[_b64(i) for i in images],
                                   return_logprob=True)

        first, again = ask([one, two]), ask([one, two])
        single = ask([other], f"Describe {PLACEHOLDER} now")
        assert engine.update_weights_from_disk(changed)["success"]
        scaled = ask([two, one])
        # a trainer's push of the original tower (transformers 5's names) on every rank
        tower = [("model." + n if n.startswith("visual.") else n, t)
                 for n, t in original.items() if "visual" in n]
        assert engine.update_weights_from_tensor(tower)["success"]
        pushed = ask([one, two])
        name = "model.visual.merger.mlp.2.bias"
        got = engine.get_weights_by_name(name, truncate_size=64)
        info = engine.get_server_info()
    assert info["tp_size"] == 2
    _check_parity(folder, first, [one, two])
    _check_parity(folder, single, [other])
    _check_parity(changed, scaled, [two, one])
    assert again["output_ids"] == first["output_ids"]
    prompt_len = len(first["meta_info"]["expanded_input_ids"])
    assert again["meta_info"]["cached_tokens"] == prompt_len - 1  # through both images
    assert pushed["output_ids"] == first["output_ids"]
    lps = lambda r: [e[0] for e in r["meta_info"]["output_token_logprobs"]]  # noqa: E731
    assert max(abs(a - b) for a, b in zip(lps(pushed), lps(first))) < 1e-4
    assert got == pytest.approx(original["visual.merger.mlp.2.bias"].tolist(), abs=1e-6)
