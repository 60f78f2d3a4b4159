"""rollserve convert: per-rank files for a tensor-parallel size, read back by each rank
with --load-format sharded_state, compute what the Hugging Face folder does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from rollserve.executor.model_loader import load_model
from tests.executor.test_tensor_parallel import greedy_run
from tests.tp_ranks import run_on_ranks


def convert(src: str, out: str, tp: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rollserve.cli", "convert", "--hf-ckpt-path", src,
                           "--save-path", out, "--model-parallel", str(tp)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.multiprocess
def test_each_rank_reads_only_its_file_and_answers_as_the_hf_folder(tiny_models, tmp_path):
    src, out = tiny_models["qwen3"], str(tmp_path / "tp2")
    done = convert(src, out, 2)
    assert done.returncode == 0, done.stderr
    with safe_open(os.path.join(out, "model-rank-1-part-0.safetensors"), "pt") as f:
        qkv_rows = f.get_slice("model.layers.0.self_attn.q_proj.weight").get_shape()[0]
    assert qkv_rows == 2 * 16  # rank 1's two query heads of dim 16
    assert os.path.exists(os.path.join(out, "tokenizer.json"))
    tokens, logprobs = greedy_run(src)
    for rank_tokens, rank_logprobs in run_on_ranks(greedy_run, 2, out, "sharded_state"):
        assert rank_tokens == tokens
        assert torch.allclose(rank_logprobs, logprobs, atol=1e-5, rtol=0)


def test_files_cut_for_another_tp_size_or_not_converted_are_refused(tiny_models, tmp_path):
    from rollserve.executor.sharded_state import iterate_rank_file

    out = str(tmp_path / "tp1")
    assert convert(tiny_models["llama"], out, 1).returncode == 0
    assert load_model(out, torch.float32, "cpu", "sharded_state").num_kv_heads == 2
    with pytest.raises(ValueError, match="converted for tp_size 1, not 2"):
        next(iterate_rank_file(out, 0, 2))
    with pytest.raises(ValueError, match="has no sharded_state.json"):
        load_model(tiny_models["llama"], torch.float32, "cpu", "sharded_state")
    done = convert(tiny_models["llama"], str(tmp_path / "x"), 3)
    assert done.returncode != 0 and "not divisible by tp_size 3" in done.stderr
