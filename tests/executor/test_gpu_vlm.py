"""A tiny Qwen2.5-VL through the whole engine on the GPU (Triton kernels, decode CUDA graphs
reading each request's rope delta, overlap scheduling, radix cache, chunked prefill through
the images) against transformers on the CPU: greedy tokens equal in float32, logprobs close."""

import base64
import io

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("triton")

import rollserve  # noqa: E402
from tests.executor.test_qwen2_vl import PLACEHOLDER, _transformers_greedy  # noqa: E402
from tests.tiny_vlm import random_image  # noqa: E402

STEPS = 12


def _b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_gpu_engine_matches_transformers(tiny_vlms, arch):
    folder = tiny_vlms[arch]
    pictures = [[random_image(140, 120, 1)], [random_image(90, 60, 2), random_image(140, 120, 3)],
                [random_image(140, 120, 1)]]  # the third repeats the first: a cache hit
    texts = [f"Describe {PLACEHOLDER} now", f"{PLACEHOLDER} versus {PLACEHOLDER}:",
             f"Describe {PLACEHOLDER} now"]
    params = {"temperature": 0, "max_new_tokens": STEPS, "ignore_eos": True}
    with rollserve.Engine(folder, device="cuda", dtype="float32", max_total_tokens=4096,
                          chunked_prefill_size=16, log_level="warning") as engine:
        results = [engine.generate(t, params, image_data=[_b64(p) for p in ps], return_logprob=True)
                   for t, ps in zip(texts, pictures)]
        batch = engine.generate(texts, params, image_data=[[_b64(p) for p in ps] for ps in pictures],
                                return_logprob=True)  # all three decoding together
    assert results[2]["meta_info"]["cached_tokens"] > 0
    for result, together, ps in zip(results, batch, pictures):
        ids = result["meta_info"]["expanded_input_ids"]
        tokens, logprobs = _transformers_greedy(folder, ids, ps, STEPS)
        assert result["output_ids"] == tokens and together["output_ids"] == tokens
        ours = [e[0] for e in result["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(ours, logprobs)) < 2e-3


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("dp_encoder", [False, True], ids=["replicated", "dp_encoder"])
def test_gpu_tp2_matches_transformers(tiny_vlms, dp_encoder):
    """--tp-size 2 over NCCL: the language model split, the tower whole on both GPUs (or the
    images shared out with --mm-enable-dp-encoder: an NCCL all-gather of their features)."""
    folder = tiny_vlms["qwen2_5_vl"]
    pictures = [random_image(90, 60, 2), random_image(140, 120, 3)]
    text = f"{PLACEHOLDER} versus {PLACEHOLDER}:"
    params = {"temperature": 0, "max_new_tokens": STEPS, "ignore_eos": True}
    with rollserve.Engine(folder, device="cuda", dtype="float32", max_total_tokens=4096, tp_size=2,
                          mm_enable_dp_encoder=dp_encoder, chunked_prefill_size=16,
                          log_level="warning") as engine:
        first, again = (engine.generate(text, params, image_data=[_b64(p) for p in pictures],
                                        return_logprob=True) for _ in range(2))
    assert again["meta_info"]["cached_tokens"] > 0 and again["output_ids"] == first["output_ids"]
    tokens, logprobs = _transformers_greedy(folder, first["meta_info"]["expanded_input_ids"],
                                            pictures, STEPS)
    assert first["output_ids"] == tokens
    ours = [e[0] for e in first["meta_info"]["output_token_logprobs"]]
    assert max(abs(a - b) for a, b in zip(ours, logprobs)) < 2e-3
