"""TRL's clients against a live server: the real VLLMClient (TRL 1.x) for generation and
the server queries, the async GRPO client for pause/resume, and `trl vllm-serve`'s
/generate/ and /chat/ replayed as trl/extras/vllm_client.py sends them."""

from __future__ import annotations

import threading
import time

import pytest

PROMPTS = ["The capital of France is", "One, two, three,"]


@pytest.fixture(scope="module")
def trl_client(server):
    pytest.importorskip("trl")
    import trl.generation.vllm_client as vc

    # VLLMClient refuses to start without vLLM installed; its generation path needs none of it
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vc, "is_vllm_available", lambda *a, **k: True)
        yield vc.VLLMClient(base_url=server.url, connection_timeout=30)


def test_vllm_client_generate(trl_client, tokenizer):
    out = trl_client.generate(PROMPTS, n=2, temperature=0.8, max_tokens=5, logprobs=0)
    assert out["prompt_ids"] == [tokenizer.encode(p) for p in PROMPTS]
    assert len(out["completion_ids"]) == 4
    # sampling at temperature 0.8 may draw EOS early: a short completion must end on it
    eos = tokenizer.eos_token_id
    assert all(len(c) == 5 or (0 < len(c) < 5 and c[-1] == eos) for c in out["completion_ids"])
    for ids, logprobs, logprob_ids in zip(out["completion_ids"], out["logprobs"],
                                          out["logprob_token_ids"]):
        assert [row[0] for row in logprob_ids] == ids  # the sampled token comes first
        assert all(row[0] <= 0.0 for row in logprobs)
    tops = trl_client.generate([tokenizer.encode(PROMPTS[0])], max_tokens=3, logprobs=2,
                               temperature=0.0)
    assert all(len(row) >= 2 for row in tops["logprobs"][0])
    assert all(row == sorted(row, reverse=True) for row in tops["logprobs"][0])


def test_vllm_client_chat_and_server_queries(trl_client, tokenizer):
    messages = [[{"role": "user", "content": "Say hi"}]]
    out = trl_client.chat(messages, max_tokens=4, temperature=0.0)
    expected = tokenizer.apply_chat_template(messages[0], tokenize=True, add_generation_prompt=True)
    assert out["prompt_ids"] == [list(getattr(expected, "input_ids", expected))]
    assert len(out["completion_ids"][0]) <= 4 and out["logprobs"] is not None
    assert trl_client.get_world_size() == 1
    assert trl_client.get_server_info()["weight_transfer_config"] is not None
    trl_client.reset_prefix_cache()
    # vLLM's guided decoding regex is served as a regex constraint (scheduler/grammar.py)
    guided = trl_client.generate(PROMPTS[:1], max_tokens=4, structured_outputs_regex="[0-9]+")
    text = tokenizer.decode(guided["completion_ids"][0], skip_special_tokens=True)
    assert text and text.isdigit(), text
    # distillation's teacher call: /v1/completions with prompt_logprobs (values checked
    # against transformers in test_sequence_logprobs.py)
    teacher = trl_client.get_sequence_logprobs([[504, 3458, 282]], [1], top_logprobs=2)
    assert teacher["actual_token_ids"] == [[[3458], [282]]]
    assert all(len(row) == 2 for row in teacher["logprobs"][0])


def test_async_grpo_client_pause_keep_and_resume(server, http):
    pytest.importorskip("trl")
    from accelerate import PartialState
    from trl.experimental.async_grpo.vllm_client import VLLMClient

    PartialState()  # the client logs through accelerate, as inside the trainer
    client = VLLMClient(server.url, server_timeout=30)
    client.wait_for_server_ready()
    assert client.get_max_model_len() > 0 and client.get_dtype() == "torch.float32"
    assert client.get_world_size() == 1
    result = {}

    def long_request():
        result["out"] = http.post("/generate", json={"text": PROMPTS[0], "sampling_params": {
            "max_new_tokens": 40, "ignore_eos": True}}).json()

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.5)
    client.pause()  # mode=keep: the request is frozen, not aborted
    assert http.get("/is_paused").json()["is_paused"] is True
    time.sleep(0.5)
    assert worker.is_alive()
    client.resume()
    worker.join(120)
    assert result["out"]["meta_info"]["finish_reason"]["type"] == "length"


def test_pause_abort_and_wait_modes(http):
    result = {}

    def long_request(key):
        result[key] = http.post("/generate", json={"text": PROMPTS[1], "sampling_params": {
            "max_new_tokens": 40, "ignore_eos": True}}).json()

    worker = threading.Thread(target=long_request, args=("abort",))
    worker.start()
    time.sleep(0.5)
    assert http.post("/pause", params={"mode": "abort"}).json() == {"status": "paused"}
    worker.join(60)
    assert result["abort"]["meta_info"]["finish_reason"]["type"] == "abort"
    http.post("/resume")
    worker = threading.Thread(target=long_request, args=("wait",))
    worker.start()
    time.sleep(0.5)
    assert http.post("/pause", params={"mode": "wait"}).status_code == 200  # returns once drained
    assert http.get("/v1/loads").json()["loads"][0]["num_total_reqs"] == 0
    http.post("/resume")
    worker.join(60)
    assert result["wait"]["meta_info"]["finish_reason"]["type"] == "length"
    assert http.post("/pause", params={"mode": "later"}).status_code == 400


def legacy_payload(**overrides) -> dict:
    """trl vllm-serve's client: VLLMClient.generate's json body with its defaults."""
    body = {"prompts": PROMPTS, "images": None, "n": 2, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 6,
            "truncate_prompt_tokens": None, "structured_outputs_regex": None,
            "generation_kwargs": {}}
    body.update(overrides)
    return body


def test_trl_vllm_serve_generate_and_chat(http, tokenizer):
    out = http.post("/generate/", json=legacy_payload()).json()
    assert out["prompt_ids"] == [tokenizer.encode(p) for p in PROMPTS]
    assert len(out["completion_ids"]) == 4
    assert [len(lp) for lp in out["logprobs"]] == [len(c) for c in out["completion_ids"]]
    seeded = legacy_payload(generation_kwargs={"seed": 7}, n=1)
    first, again = (http.post("/generate/", json=seeded).json() for _ in range(2))
    # Same seed, same tokens. The second call reuses the first one's prefix from the radix
    # cache, so its logprobs come from a differently shaped forward: equal to fp32 rounding,
    # not bit for bit (bit-exact repeats are the deterministic mode's promise, not this one's).
    assert first["completion_ids"] == again["completion_ids"]
    assert first["prompt_ids"] == again["prompt_ids"]
    for a, b in zip(first["logprobs"], again["logprobs"]):
        assert a == pytest.approx(b, abs=1e-4)
    bad = http.post("/generate/", json=legacy_payload(generation_kwargs={"best_of": 3}))
    assert bad.status_code == 400 and "best_of" in bad.text
    messages = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "Bye"}]]
    chat = http.post("/chat/", json={"messages": messages, "n": 1, "repetition_penalty": 1.0,
                                     "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0,
                                     "max_tokens": 4, "truncate_prompt_tokens": None,
                                     "structured_outputs_regex": None, "generation_kwargs": {},
                                     "chat_template_kwargs": {}}).json()
    expected = tokenizer.apply_chat_template(messages[1], tokenize=False, add_generation_prompt=True)
    assert chat["prompt_ids"][1] == tokenizer.encode(expected, add_special_tokens=False)
    assert http.get("/get_world_size/").json() == {"world_size": 1}


def test_init_weight_transfer_engine_names_the_group(http):
    """TRL's own init_info (no rollserve fields) asks for vLLM's NCCL group, which this CPU
    server cannot join: refused at once, naming the shim; a bad group names the field.
    Nothing listens on the port: a refusal must not wait for a rendezvous."""
    from rollserve.api.server import free_port

    trl_info = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1,
                "world_size": 2, "packed": True}  # VLLMClient.init_communicator's, verbatim
    refused = http.post("/init_weight_transfer_engine", json={"init_info": trl_info})
    assert refused.status_code == 400 and "rollserve_trl.py" in refused.text
    for group, field in (("nccl", "group"), ("vllm", "backend")):
        bad = http.post("/init_weight_transfer_engine", json={"init_info": {
            **trl_info, "group": group, "backend": "gloo"}})
        assert bad.status_code in (400, 422) and field in bad.text, bad.text


def test_init_with_a_pre_shared_nccl_id(http):
    """vLLM's torch-free rendezvous (nccl_unique_id_b64 instead of the store's address): a
    malformed id, both rendezvous at once, or the id with rollserve's torch group get a 400
    naming the field; a well-formed one reaches the NCCL group, which this CPU engine refuses
    with the shim's name. Neither rendezvous names master_address."""
    import base64

    good = base64.b64encode(bytes(128)).decode()
    base = {"rank_offset": 1, "world_size": 2}
    cases = [({"nccl_unique_id_b64": "@@"}, "nccl_unique_id_b64"),
             ({"nccl_unique_id_b64": good, "master_address": "127.0.0.1", "master_port": 29500},
              "not both"),
             ({"nccl_unique_id_b64": good, "group": "torch"}, "group vllm"),
             ({"nccl_unique_id_b64": good}, "rollserve_trl.py"),
             ({}, "master_address")]
    for extra, expected in cases:
        r = http.post("/init_weight_transfer_engine", json={"init_info": {**base, **extra}})
        assert r.status_code == 400 and expected in r.text, (extra, r.text)
