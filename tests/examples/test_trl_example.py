"""examples/trl/grpo_trl.py on a tiny random Llama: two steps of TRL's GRPOTrainer in
server mode against a server the example launches; rewards logged per step, and the
server's logprobs match TRL's forward pass after each weight push."""

import importlib.util
import os

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "trl", "grpo_trl.py")


def test_two_trl_grpo_steps(tiny_models, tmp_path, capsys):
    pytest.importorskip("trl")
    spec = importlib.util.spec_from_file_location("grpo_trl", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    summary = example.run(example.parse_args([
        "--model-path", tiny_models["llama"], "--steps", "2", "--max-completion-length", "6",
        "--out-dir", str(tmp_path)]))
    assert summary["steps"] == 2 and len(summary["rewards"]) == 2
    assert all(r < 0 for r in summary["rewards"])  # -length / 10 of real completions
    assert summary["max_logprob_diff"] is not None and summary["max_logprob_diff"] < 1e-3
    assert capsys.readouterr().out.count('"reward"') == 2
