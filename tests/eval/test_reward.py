"""(d) The reward task: answers from the policy server, scored by a reward model's
/classify on another server."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rollserve.api.server import spawn_server, wait_until_healthy
from rollserve.eval.tasks.reward import conversation
from rollserve.rollout.launch import stop_process_tree
from tests.eval.test_eval_run import eval_cli
from tests.tiny_models import tiny_config


def save_tiny_reward_model(out_dir: str, tokenizer_dir: str) -> str:
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config("llama", len(tokenizer), num_labels=1)
    config.pad_token_id = config.eos_token_id
    torch.manual_seed(5)
    LlamaForSequenceClassification(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def test_reward_task(tmp_path, eval_server, client, eval_model_dir):
    from rollserve.rollout.client import RolloutClient

    rm_dir = save_tiny_reward_model(str(tmp_path / "rm"), eval_model_dir)
    with open(tmp_path / "rm.log", "w") as log:
        rm_proc, rm_url = spawn_server(["--model-path", rm_dir, "--max-total-tokens", "8000"],
                                       log_file=log)
    try:
        client.update_weights_from_disk(eval_model_dir, weight_version="reward")
        wait_until_healthy(rm_url, rm_proc, timeout=120)
        out = tmp_path / "out"
        code = eval_cli("run", "--server", eval_server, "--reward-server", rm_url,
                        "--tasks", "reward", "--limit", "2", "--n", "2", "--max-new-tokens", "4",
                        "--output-dir", str(out), "--no-progress")
        assert code == 0
        metrics = json.loads((out / "summary.json").read_text())["results"]["reward"]["metrics"]
        assert set(metrics) == {"reward_mean", "reward_std", "reward_best_of_n", "reward_mean_stderr"}
        assert all(math.isfinite(v) for v in metrics.values())
        assert metrics["reward_best_of_n"] >= metrics["reward_mean"]
        samples = [json.loads(line) for line in open(out / "samples.jsonl")]
        assert [len(s["rewards"]) for s in samples] == [2, 2]
        # each reward is the reward model's score of [question, answer]
        with RolloutClient(rm_url, progress=False) as rm:
            for sample in samples:
                direct = rm.classify(conversations=[conversation(sample, text)
                                                    for text in sample["outputs"]])
                assert sample["rewards"] == pytest.approx([s[0] for s in direct], abs=1e-5)
    finally:
        stop_process_tree(rm_proc)
