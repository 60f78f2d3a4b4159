"""A short run of examples/training/grpo_arithmetic.py on tiny random models: two GRPO
steps with --sync disk and two with --sync tensor against one policy server, scored by
a tiny reward model through /classify; checks checkpoints, weight versions, logprob
parity after each sync, the metrics file, the wandb offline run and the PNG."""

import importlib.util
import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from safetensors.torch import load_file

from rollserve.api.server import spawn_server, wait_until_healthy
from rollserve.rollout import RolloutClient
from rollserve.rollout.launch import stop_process_tree
from tests.tiny_models import tiny_config

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "training",
                       "grpo_arithmetic.py")
SERVER_ARGS = ["--max-total-tokens", "4096", "--max-request-body-bytes", str(64 << 20)]


def load_example():
    spec = importlib.util.spec_from_file_location("grpo_arithmetic", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory, default_model_dir) -> str:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = str(tmp_path_factory.mktemp("tiny-rm"))
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config("llama", len(tokenizer), num_labels=1, pad_token_id=0))
    with torch.no_grad():  # spread the scores, so that groups get non-zero advantages
        model.score.weight.mul_(50.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def servers(tiny_models, reward_model_dir, tmp_path_factory):
    """(policy server URL, reward model server URL), started together."""
    logs = tmp_path_factory.mktemp("example-logs")
    procs = [spawn_server(["--model-path", path, *SERVER_ARGS],
                          log_file=open(os.path.join(str(logs), f"{name}.log"), "w"))
             for name, path in (("policy", tiny_models["llama"]), ("reward", reward_model_dir))]
    try:
        for proc, url in procs:
            wait_until_healthy(url, proc, timeout=300)
        yield procs[0][1], procs[1][1]
    finally:
        with ThreadPoolExecutor() as pool:
            list(pool.map(stop_process_tree, [proc for proc, _ in procs]))


def read_steps(out_dir: str) -> list:
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if "step" in r]


@pytest.mark.parametrize("sync, wandb_mode", [("disk", "offline"), ("tensor", "disabled"),
                                              ("distributed", "disabled")])
def test_two_grpo_steps(sync, wandb_mode, servers, tiny_models, tmp_path):
    policy_url, reward_url = servers
    with RolloutClient(policy_url) as client:  # start from the weights the trainer loads
        client.update_weights_from_disk(tiny_models["llama"], weight_version="start")
    example = load_example()
    out_dir = str(tmp_path / sync)
    summary = example.run(example.parse_args([
        "--model-path", tiny_models["llama"], "--server-url", policy_url, "--sync", sync,
        "--reward-model", reward_url, "--steps", "2", "--prompts-per-step", "2",
        "--group-size", "4", "--max-new-tokens", "4", "--lr", "1e-3", "--save-every", "2",
        "--train-layers", "1",
        "--no-eval", "--wandb-mode", wandb_mode, "--out-dir", out_dir]))

    assert summary["final_weight_version"] == "step-2"
    with RolloutClient(policy_url) as client:
        assert client.get_model_info()["weight_version"] == "step-2"
    steps = read_steps(out_dir)
    assert [s["step"] for s in steps] == [1, 2]
    assert all(s["trained_sequences"] > 0 for s in steps)
    assert steps[1]["logprob_max_abs_diff"] < 1e-4  # drawn from the synced step-1 weights
    assert all(s["parity/max_abs_diff"] < 1e-4 and 0 <= s["parity/kl"] < 1e-8 for s in steps)
    checkpoints = sorted(n for n in os.listdir(out_dir) if n.startswith("checkpoint-"))
    assert checkpoints == (["checkpoint-1", "checkpoint-2"] if sync == "disk" else ["checkpoint-2"])
    if sync == "distributed":  # the group was left at the end: a new one can be opened
        with RolloutClient(policy_url) as client:
            with pytest.raises(Exception, match="no group"):
                client._call("/destroy_weights_update_group", {"group_name": "grpo_weight_sync"})
    trained = load_file(os.path.join(out_dir, "checkpoint-2", "model.safetensors"))
    original = load_file(os.path.join(tiny_models["llama"], "model.safetensors"))
    assert any(not torch.equal(trained[k], original[k]) for k in original)
    assert os.path.getsize(os.path.join(out_dir, "reward_curve.png")) > 10_000
    assert os.path.isdir(os.path.join(out_dir, "wandb")) == (wandb_mode == "offline")
