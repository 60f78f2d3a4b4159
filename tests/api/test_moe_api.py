"""A tiny DeepSeek-V3-style model (MLA, grouped routing, shared experts) served over HTTP:
model / server info say what it is, /generate answers, the expert-distribution endpoints
count its routing."""

import os

import httpx
import pytest
import torch

from tests.api.conftest import start_server, stop_server
from tests.executor.moe_checkpoints import save_variant


@pytest.fixture(scope="module")
def moe_server(tmp_path_factory, default_model_dir):
    folder = str(tmp_path_factory.mktemp("deepseek_v3"))
    hf_model = save_variant("deepseek_v3", folder, seed=3, tokenizer_dir=default_model_dir)
    dump_dir = str(tmp_path_factory.mktemp("dumps"))
    os.environ["ROLLSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR"] = dump_dir  # inherited by the server
    running = start_server(tmp_path_factory.mktemp("moe-logs"), "moe",
                           ["--model-path", folder, "--disable-radix-cache"])
    try:
        with httpx.Client(base_url=running.url, timeout=120) as client:
            yield client, hf_model, dump_dir
    finally:
        os.environ.pop("ROLLSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR", None)
        stop_server(running)


def test_model_and_server_info_describe_the_experts(moe_server):
    http, _, _ = moe_server
    for info in (http.get("/get_model_info").json(), http.get("/get_server_info").json()):
        assert info["architecture"] == "DeepseekV3ForCausalLM"
        assert (info["num_experts"], info["num_experts_per_tok"], info["num_moe_layers"]) == (8, 2, 2)
        assert info["mla"] is True


def test_generate_and_expert_distribution_over_http(moe_server):
    http, hf_model, dump_dir = moe_server
    assert http.post("/start_expert_distribution_record").json()["success"]
    metas = []
    for text in ("The capital of France", "Mixture of experts"):
        out = http.post("/generate", json={"text": text, "sampling_params": {
            "max_new_tokens": 4, "temperature": 0, "ignore_eos": True}}).json()
        assert out["meta_info"]["completion_tokens"] == 4
        metas.append(out["meta_info"])
    assert http.post("/stop_expert_distribution_record").json()["success"]
    dump = http.post("/dump_expert_distribution_record").json()
    assert dump["success"] and os.path.dirname(dump["path"]) == dump_dir
    forwarded = sum(m["prompt_tokens"] + m["completion_tokens"] - 1 for m in metas)
    counts = torch.tensor(dump["logical_count"])
    assert int(counts.sum()) == forwarded * 2 * 2  # tokens x top-k x MoE layers
    assert torch.equal(torch.load(dump["path"])["logical_count"], counts)
