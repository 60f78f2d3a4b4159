"""Tensor parallel on two GPUs (NCCL): --tp-size 2 with CUDA graphs and the overlap
scheduler gives --tp-size 1's greedy tokens. Skipped without two CUDA devices.

    python -m pytest -q -m gpu tests/executor/test_gpu_tp.py
"""

from __future__ import annotations

import pytest
import torch

import rollserve

pytestmark = [pytest.mark.gpu, pytest.mark.multiprocess,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")]

PROMPTS = ["The three primary colors are", "def fibonacci(n):", "Once upon a time",
           "The chemical symbol for gold is"]


def run(model_path: str, tp: int, **kwargs):
    with rollserve.Engine(model_path=model_path, tp_size=tp, dtype="float32",
                          max_total_tokens=8192, log_level="warning", **kwargs) as eng:
        outs = eng.generate(PROMPTS, {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True},
                            return_logprob=True)
        sampled = eng.generate(PROMPTS * 8, {"temperature": 1.0, "max_new_tokens": 24})
        assert all(len(o["output_ids"]) > 0 for o in sampled)  # the ranks stayed in step
    return ([o["output_ids"] for o in outs],
            [[lp[0] for lp in o["meta_info"]["output_token_logprobs"]] for o in outs])


@pytest.mark.parametrize("kwargs", [{}, {"disable_cuda_graph": True},
                                    {"disable_overlap_schedule": True}],
                         ids=["graphs+overlap", "eager", "no-overlap"])
def test_tp2_on_gpus_matches_tp1(tiny_models, kwargs):
    tokens, logprobs = run(tiny_models["qwen3"], 1, **kwargs)
    tp_tokens, tp_logprobs = run(tiny_models["qwen3"], 2, **kwargs)
    assert tp_tokens == tokens
    for a, b in zip(tp_logprobs, logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3


@pytest.mark.parametrize("variant,ep_size", [("qwen3_moe", 2), ("qwen3_moe", 1),
                                             ("deepseek_v3", 2)])
def test_moe_tp2_on_gpus_matches_tp1(tmp_path, default_model_dir, variant, ep_size):
    """MoE under TP with the fused Triton kernel (expert parallel: other ranks' experts
    skipped by its block map) and CUDA graphs around the all-reduce."""
    from tests.executor.moe_checkpoints import save_variant

    save_variant(variant, str(tmp_path), seed=4, tokenizer_dir=default_model_dir)
    tokens, logprobs = run(str(tmp_path), 1)
    tp_tokens, tp_logprobs = run(str(tmp_path), 2, ep_size=ep_size)
    assert tp_tokens == tokens
    for a, b in zip(tp_logprobs, logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3


@pytest.mark.parametrize("variant,a2a", [("qwen3_moe", "none"), ("qwen3_moe", "deepep"),
                                         ("deepseek_v3", "deepep")])
def test_moe_dp_attention_on_gpus_matches_tp1(tmp_path, default_model_dir, variant, a2a):
    """DP attention over NCCL with whole experts: the all-gather + all-reduce, or the
    all-to-all dispatch (uneven all_to_all_single splits, the Triton kernel one expert per
    received row), answer as one GPU."""
    from tests.executor.moe_checkpoints import save_variant

    save_variant(variant, str(tmp_path), seed=4, tokenizer_dir=default_model_dir)
    tokens, logprobs = run(str(tmp_path), 1)
    dp_tokens, dp_logprobs = run(str(tmp_path), 2, dp_size=2, enable_dp_attention=True, ep_size=2,
                                 moe_a2a_backend=a2a)
    assert dp_tokens == tokens
    for a, b in zip(dp_logprobs, logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3


@pytest.mark.parametrize("algorithm", ["EAGLE", "NEXTN"])
def test_draft_models_tp2_on_gpus_match_tp1_plain(tiny_models, tmp_path, default_model_dir,
                                                  algorithm):
    """A draft model split over two GPUs (NCCL; rank 0's drafts broadcast) keeps TP 1's plain
    greedy tokens; NEXTN drafts with DeepSeek-V3's MTP layer (MLA latent, MoE experts)."""
    from tests.executor.moe_checkpoints import save_variant
    from tests.scheduler.draft_checkpoints import add_mtp_layer, save_eagle_head

    if algorithm == "EAGLE":
        model = tiny_models["llama"]
        draft = {"speculative_draft_model_path": save_eagle_head(model, str(tmp_path / "head"))}
    else:
        save_variant("deepseek_v3", str(tmp_path / "ds"), seed=4, tokenizer_dir=default_model_dir)
        model, draft = add_mtp_layer(str(tmp_path / "ds")), {}
    tokens, logprobs = run(model, 1)
    tp_tokens, tp_logprobs = run(model, 2, speculative_algorithm=algorithm,
                                 speculative_num_draft_tokens=3, **draft)
    assert tp_tokens == tokens
    for a, b in zip(tp_logprobs, logprobs):
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-3
