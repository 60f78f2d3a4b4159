"""A tiny DeepSeek-V3-style model (MLA, grouped routing, shared experts) served over HTTP:
model / server info say what it is, /generate answers, the expert-distribution endpoints
count its routing, and /generate's return_routed_experts gives each token's experts."""

import os

import httpx
import pytest
import torch

from rollserve.executor.routed_experts import decode_routed_experts
from tests.api.conftest import start_server, stop_server
from tests.executor.moe_checkpoints import save_variant


@pytest.fixture(scope="module")
def moe_server(tmp_path_factory, default_model_dir):
    folder = str(tmp_path_factory.mktemp("deepseek_v3"))
    hf_model = save_variant("deepseek_v3", folder, seed=3, tokenizer_dir=default_model_dir)
    dump_dir = str(tmp_path_factory.mktemp("dumps"))
    os.environ["ROLLSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR"] = dump_dir  # inherited by the server
    running = start_server(tmp_path_factory.mktemp("moe-logs"), "moe",
                           ["--model-path", folder, "--disable-radix-cache",
                            "--enable-return-routed-experts"])
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


def test_return_routed_experts_over_http(moe_server):
    """SGLang's fields: meta_info.routed_experts (base64 int32 [tokens, layers, top-k]) over
    tokens [routed_experts_start_len, seq_len - 1); bad values are 400s naming the field."""
    http, hf_model, _ = moe_server
    config = hf_model.config
    body = {"text": "Routing replay", "return_routed_experts": True, "routed_experts_start_len": 1,
            "sampling_params": {"max_new_tokens": 3, "temperature": 0, "ignore_eos": True}}
    meta = http.post("/generate", json=body).json()["meta_info"]
    rows = decode_routed_experts(meta["routed_experts"], config.num_hidden_layers,
                                 config.num_experts_per_tok)
    assert meta["routed_experts_start_len"] == 1
    assert rows.shape[0] == meta["prompt_tokens"] + meta["completion_tokens"] - 1 - 1
    assert (rows[:, :config.first_k_dense_replace] == -1).all()
    assert ((rows[:, config.first_k_dense_replace:] >= 0)
            & (rows[:, config.first_k_dense_replace:] < config.n_routed_experts)).all()
    assert "routed_experts" not in http.post("/generate", json={**body, "return_routed_experts": False}
                                             ).json()["meta_info"]
    for bad in ({"routed_experts_start_len": 10_000}, {"routed_experts_start_len": -1},
                {"routed_experts_start_len": [0, 1]}):
        response = http.post("/generate", json={**body, **bad})
        assert response.status_code == 400 and next(iter(bad)) in response.text, (bad, response.text)
