"""slime's and verl's SGLang calls, replayed as their code sends them (recorded from
slime/backends/sglang_utils/sglang_engine.py and verl's sglang_rollout/http_server_engine.py),
checking the fields they read back."""

from __future__ import annotations

import threading
import time

import pytest

PROMPT = "The capital of France is"


def verl_generate_payload(**overrides) -> dict:
    """verl's HttpServerAdapter.generate: every argument, then the None values dropped."""
    payload = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "temperature": 0},
               "input_ids": None, "image_data": None, "return_logprob": True,
               "logprob_start_len": None, "top_logprobs_num": None, "token_ids_logprob": None,
               "lora_path": None, "custom_logit_processor": None}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def test_verl_generate_with_sglang_nulls(http):
    # verl's async server passes GenerateReqInput fields through unfiltered: nulls included
    body = {"text": PROMPT, "rid": "verl-rid-1", "image_data": None, "token_ids_logprob": None,
            "sampling_params": {"max_new_tokens": 4, "temperature": 0}, "return_logprob": True,
            "logprob_start_len": None, "top_logprobs_num": None, "lora_path": None,
            "return_hidden_states": False, "log_metrics": True, "priority": None,
            "data_parallel_rank": None, "custom_labels": None}
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    meta = response.json()["meta_info"]
    assert meta["id"] == "verl-rid-1" and len(meta["output_token_logprobs"]) == 4
    response = http.post("/generate", json=verl_generate_payload())
    assert response.status_code == 200 and response.json()["meta_info"]["completion_tokens"] == 4


@pytest.mark.parametrize("field, value", [
    ("image_data", "data:image/png;base64,AAAA"), ("return_entropy", True),
    ("lora_path", "adapter"), ("return_hidden_states", True), ("data_parallel_rank", 1),
    ("custom_logit_processor", "gASV..."), ("return_routed_experts", True),
])
def test_sglang_field_set_to_what_we_cannot_do_is_refused_by_name(http, field, value):
    response = http.post("/generate", json={"text": PROMPT, field: value})
    assert response.status_code == 400
    assert response.json()["param"] == field and field in response.json()["message"]


def test_unknown_field_still_refused(http):
    response = http.post("/generate", json={"text": PROMPT, "no_such_field": 1})
    assert response.status_code == 422 and "no_such_field" in response.text


def test_custom_params_accepted_and_noted_without_a_processor(http):
    # slime sends sampling_params.custom_params for its custom logit processor
    body = {"text": PROMPT, "sampling_params": {"max_new_tokens": 2, "temperature": 0,
                                                "custom_params": {"banned": [1, 2]}}}
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    assert "ignored" in response.json()["meta_info"]["custom_params"]


def test_verl_abort_request_defaults_are_a_noop(http):
    response = http.post("/abort_request", json={"rid": "", "abort_all": False})
    assert response.status_code == 200 and response.json()["success"] is True


def test_slime_start_profile_with_null_fields(http, tmp_path):
    body = {"output_dir": str(tmp_path), "start_step": None, "num_steps": 1, "activities": None,
            "profile_by_stage": False, "with_stack": None, "record_shapes": None}
    response = http.post("/start_profile", json=body)
    assert response.status_code == 200, response.text
    http.post("/generate", json={"text": PROMPT, "sampling_params": {"max_new_tokens": 1}})
    stop = http.post("/stop_profile", json={})
    assert stop.status_code in (200, 400)  # 400: the one-step run already stopped by itself
    assert http.post("/start_profile", json={**body, "profile_by_stage": True}).status_code == 400


def test_v1_loads_reports_running_requests(http):
    """slime polls /v1/loads until the engine is idle; a request in flight must show."""
    done = threading.Event()

    def long_request():
        http.post("/generate", json={"text": PROMPT, "sampling_params": {
            "max_new_tokens": 64, "ignore_eos": True}})
        done.set()

    threading.Thread(target=long_request, daemon=True).start()
    seen = 0
    deadline = time.monotonic() + 60
    while not done.is_set() and time.monotonic() < deadline:
        load = http.get("/v1/loads").json()
        assert load["dp_rank_count"] == 1 and len(load["loads"]) == 1
        seen = max(seen, load["loads"][0]["num_total_reqs"])
        time.sleep(0.05)
    assert seen >= 1
    done.wait(60)
    idle = http.get("/v1/loads").json()["loads"][0]
    assert idle["num_running_reqs"] == 0 and idle["max_total_num_tokens"] > 0
    assert http.get("/v1/loads", params={"dp_rank": 3}).json()["loads"] == []


def test_weight_version_label_changes_without_aborting(http):
    """slime: get_weight_version reads `weight_version`; update_weight_version relabels
    without aborting a running request by default."""
    before = http.get("/get_weight_version").json()["weight_version"]
    result = {}

    def long_request():
        result["out"] = http.post("/generate", json={"text": PROMPT, "sampling_params": {
            "max_new_tokens": 48, "ignore_eos": True}}).json()

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.5)
    response = http.post("/update_weight_version", json={"new_version": "relabelled-7"})
    assert response.status_code == 200 and response.json()["new_version"] == "relabelled-7"
    worker.join(120)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "length"  # not aborted
    assert http.get("/get_weight_version").json()["weight_version"] == "relabelled-7"
    assert http.get("/get_model_info").json()["weight_version"] == "relabelled-7"
    http.post("/update_weight_version", json={"new_version": before})


def test_slime_weights_checker_and_post_process(http):
    """slime's check_weights(action): snapshot before a sync, compare after."""
    assert http.post("/weights_checker", json={"action": "snapshot"}).json()["success"] is True
    compare = http.post("/weights_checker", json={"action": "compare"})
    assert compare.status_code == 200 and compare.json()["success"] is True
    bad = http.post("/weights_checker", json={"action": "compare_checksum",
                                              "checksums": {"model.norm.weight": "0" * 64}})
    assert bad.status_code == 400 and "model.norm.weight" in bad.json()["message"]
    assert http.post("/weights_checker", json={"action": "explode"}).status_code == 400
    post = http.post("/post_process_weights", json={"restore_weights_before_load": False,
                                                    "post_process_quantization": False})
    assert post.status_code == 200 and post.json()["success"] is True


def test_verl_and_slime_memory_and_readiness_calls(http):
    """verl: release/resume_memory_occupation({"tags": None}); slime: release with an empty
    body; both flush the cache with GET; slime's readiness poll sends
    `Authorization: Bearer None` when it has no api key. The weights come back unchanged."""
    greedy = {"text": PROMPT, "sampling_params": {"max_new_tokens": 4, "temperature": 0}}
    before = http.post("/generate", json=greedy).json()["output_ids"]
    headers = {"Content-Type": "application/json; charset=utf-8", "Authorization": "Bearer None"}
    assert http.get("/health_generate", headers=headers).status_code == 200
    assert http.get("/flush_cache", headers=headers).status_code == 200
    for release in ({"tags": None}, {}):  # verl's, then slime's
        answer = http.post("/release_memory_occupation", json=release)
        assert answer.status_code == 200 and answer.json()["success"], answer.text
        answer = http.post("/resume_memory_occupation", json={"tags": None})
        assert answer.status_code == 200 and answer.json()["success"], answer.text
    assert http.post("/generate", json=greedy).json()["output_ids"] == before
