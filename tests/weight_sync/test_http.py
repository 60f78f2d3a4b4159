"""The weight-sync endpoints of a real server process (SGLang's paths and bodies)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from rollserve.weight_sync.tensor_transport import serialize_named_tensors
from tests.weight_sync.conftest import (PROMPT_IDS, broken_copy, hf_greedy, hf_model,
                                        state_dict_of, tiny_server)

MAX_NEW = 8


@pytest.fixture(scope="module")
def http(ckpts, tmp_path_factory):
    with tiny_server(ckpts["A"], tmp_path_factory.mktemp("logs")) as client:
        yield client


@pytest.fixture(scope="module")
def reference(ckpts):
    return {name: hf_greedy(hf_model(path), PROMPT_IDS, MAX_NEW) for name, path in ckpts.items()}


def generate(http) -> dict:
    body = {"input_ids": PROMPT_IDS,
            "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW, "ignore_eos": True}}
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def update_from_disk(http, path: str, version: str, route="/update_weights_from_disk"):
    return http.post(route, json={"model_path": path, "weight_version": version})


def test_disk_update_and_alias(http, ckpts, reference):
    response = update_from_disk(http, ckpts["B"], "v1")
    assert response.status_code == 200
    assert response.json() == {"success": True, "num_paused_requests": 0,
                               "in_flight_requests": "wait",
                               "message": f"updated 21 tensors from {ckpts['B']}"}
    out = generate(http)
    assert out["output_ids"] == reference["B"] and out["meta_info"]["weight_version"] == "v1"
    info = http.get("/get_model_info").json()
    assert info["weight_version"] == "v1" and info["model_path"] == ckpts["B"]
    assert update_from_disk(http, ckpts["A"], "v2", route="/update_weights").status_code == 200
    out = generate(http)
    assert out["output_ids"] == reference["A"] and out["meta_info"]["weight_version"] == "v2"


@pytest.mark.parametrize("kind, named", [
    ("missing", "model.layers.1.mlp.up_proj.weight"),
    ("extra", "model.layers.7.mlp.surprise.weight"),
    ("shape", "model.layers.0.self_attn.k_proj.weight"),
    ("truncated", "model.safetensors"),
])
def test_broken_checkpoint_is_refused_while_old_weights_serve(http, ckpts, reference, tmp_path,
                                                              kind, named):
    assert update_from_disk(http, ckpts["A"], "good").status_code == 200
    response = update_from_disk(http, broken_copy(ckpts["B"], str(tmp_path / kind), kind), "bad")
    assert response.status_code == 400
    body = response.json()
    assert body["success"] is False and named in body["message"], body
    out = generate(http)
    assert out["output_ids"] == reference["A"] and out["meta_info"]["weight_version"] == "good"
    assert http.get("/get_model_info").json()["weight_version"] == "good"


def test_tensor_update_in_buckets(http, ckpts, reference):
    named = list(state_dict_of(ckpts["B"]).items())
    first = {"serialized_named_tensors": [serialize_named_tensors(named[:5])], "flush_cache": False}
    assert http.post("/update_weights_from_tensor", json=first).json()["success"]
    rest = {"serialized_named_tensors": [serialize_named_tensors(named[5:12]),
                                         serialize_named_tensors(named[12:])],
            "weight_version": "tensors"}
    response = http.post("/update_weights_from_tensor", json=rest)
    assert response.status_code == 200 and response.json()["success"], response.text
    out = generate(http)
    assert out["output_ids"] == reference["B"] and out["meta_info"]["weight_version"] == "tensors"


def test_one_bucket_over_the_body_limit_is_accepted(http, ckpts, reference):
    from rollserve.frontend.server_args import ServerArgs

    assert update_from_disk(http, ckpts["A"], "small").status_code == 200
    payload = serialize_named_tensors(list(state_dict_of(ckpts["B"]).items()))
    assert len(payload) > ServerArgs().max_request_body_bytes  # the limit other routes keep
    response = http.post("/update_weights_from_tensor",
                         json={"serialized_named_tensors": [payload], "weight_version": "big"})
    assert response.status_code == 200, response.text
    assert generate(http)["output_ids"] == reference["B"]


def test_bad_tensor_payloads_are_refused(http):
    name = "model.layers.0.self_attn.k_proj.weight"
    before = http.post("/get_weights_by_name", json={"name": name, "truncate_size": 5}).json()
    cases = [(["garbage"], "bucket 0"),
             ([serialize_named_tensors([(name, torch.zeros(3, 3))])], name)]
    for buckets, named in cases:
        response = http.post("/update_weights_from_tensor",
                             json={"serialized_named_tensors": buckets})
        assert response.status_code == 400 and named in response.json()["message"]
    after = http.post("/get_weights_by_name", json={"name": name, "truncate_size": 5}).json()
    assert after == before and len(after) == 5 and all(isinstance(v, float) for v in after)


def test_get_weights_by_name(http, ckpts):
    assert update_from_disk(http, ckpts["B"], "w").status_code == 200
    name = "model.layers.1.self_attn.q_proj.weight"
    values = http.post("/get_weights_by_name", json={"name": name, "truncate_size": 4}).json()
    assert values == pytest.approx(state_dict_of(ckpts["B"])[name].flatten()[:4].tolist())
    missing = http.post("/get_weights_by_name", json={"name": "nope"})
    assert missing.status_code == 400 and "nope" in missing.json()["message"]


def test_pause_continue_release_resume(http, ckpts, reference):
    assert update_from_disk(http, ckpts["A"], "m").status_code == 200
    assert http.post("/pause_generation").status_code == 200
    assert http.post("/continue_generation").status_code == 200
    assert http.post("/release_memory_occupation", json={"tags": ["kv_cache", "weights"]}).json()["success"]
    assert http.post("/resume_memory_occupation").json()["success"]  # no body: every tag
    assert generate(http)["output_ids"] == reference["A"]
    refused = http.post("/release_memory_occupation", json={"tags": ["vram"]})
    assert refused.status_code == 400 and "unknown memory tag" in refused.json()["message"]


def test_group_calls_without_a_group_are_refused(http):
    response = http.post("/destroy_weights_update_group", json={"group_name": "none"})
    assert response.status_code == 400 and "'none'" in response.json()["message"]
    response = http.post("/update_weights_from_distributed",
                         json={"names": ["x"], "dtypes": ["float32"], "shapes": [[1]],
                               "group_name": "none"})
    assert response.status_code == 400 and "init_weights_update_group" in response.json()["message"]


def _stream(http, path: str, body: dict) -> list:
    chunks = []
    with http.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data: "):]))
    return chunks


def test_swap_under_streams_every_answer_is_what_its_spans_claim(http, ckpts):
    """The issue's probe, over HTTP: streams cross an update (pause retract); each answer's
    spans say where the policy changed, and each chunk's spans agree with the final ones."""
    assert update_from_disk(http, ckpts["A"], "p-a").status_code == 200
    n_tokens, streams = 48, {}
    body = {"input_ids": PROMPT_IDS, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": n_tokens, "ignore_eos": True}}
    threads = [threading.Thread(target=lambda k=k: streams.update({k: _stream(http, "/generate", body)}))
               for k in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # the streams are decoding (or, on a slow machine, done: spans say so)
    assert http.post("/pause_generation", json={"mode": "retract"}).status_code == 200
    assert update_from_disk(http, ckpts["B"], "p-b").json()["in_flight_requests"] == "retract"
    assert http.post("/continue_generation").status_code == 200
    for thread in threads:
        thread.join(timeout=120)
    models = {"p-a": hf_model(ckpts["A"]), "p-b": hf_model(ckpts["B"])}
    for chunks in streams.values():
        final = chunks[-1]
        tokens, spans = final["output_ids"], final["meta_info"]["weight_version_spans"]
        # on a slow machine a stream may start after the update: then it is all p-b
        assert len(tokens) == n_tokens and spans[0][0] == 0
        bounds = [s[0] for s in spans[1:]] + [n_tokens]
        for (start, version), end in zip(spans, bounds):
            assert tokens[start:end] == hf_greedy(models[version], PROMPT_IDS + tokens[:start],
                                                  end - start)
        for chunk in chunks:  # the spans so far: the final ones cut at the chunk's length
            seen = len(chunk["output_ids"])
            assert chunk["meta_info"]["weight_version_spans"] == [s for s in spans if s[0] < seen]


def test_openai_results_carry_spans(http, ckpts):
    assert update_from_disk(http, ckpts["B"], "oa").status_code == 200
    body = {"model": "default", "prompt": PROMPT_IDS, "max_tokens": 4, "temperature": 0}
    out = http.post("/v1/completions", json=body).json()
    assert out["metadata"] == {"weight_version": "oa"}
    assert out["choices"][0]["weight_version_spans"] == [[0, "oa"]]
    chunks = _stream(http, "/v1/completions", dict(body, stream=True))
    assert [c["choices"][0]["weight_version_spans"] for c in chunks if c["choices"]][-1] == [[0, "oa"]]
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "temperature": 0}
    out = http.post("/v1/chat/completions", json=chat).json()
    assert out["metadata"] == {"weight_version": "oa"}
    assert out["choices"][0]["weight_version_spans"] == [[0, "oa"]]
    chunks = [c for c in _stream(http, "/v1/chat/completions", dict(chat, stream=True)) if c["choices"]]
    assert chunks[-1]["choices"][0]["weight_version_spans"] == [[0, "oa"]]


def test_pause_modes(http, ckpts, reference):
    assert update_from_disk(http, ckpts["A"], "pm").status_code == 200
    bad = http.post("/pause_generation", json={"mode": "freeze"})
    assert bad.status_code == 422 and "mode" in bad.text
    for mode in ("abort", "retract", "in_place", "wait"):
        assert http.post("/pause_generation", json={"mode": mode}).json()["success"], mode
        assert http.post("/continue_generation").status_code == 200
    assert generate(http)["output_ids"] == reference["A"]
