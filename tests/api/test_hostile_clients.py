"""Hostile and careless clients against a real server (issue #14): every endpoint the server
lists is sent malformed, cross-site and wrongly typed requests; each must be answered with
a 4xx (never a 500 or a hang), and afterwards the server must be healthy, give the same
greedy outputs as before and hold no KV for finished requests. Then the request-id
isolation rules, on the shared server."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.api.conftest import idle_server_info

PROBE = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
EVIL = "https://evil.example"
# GET routes that act (SGLang's clients call some of them with GET): refused cross-site
STATE_CHANGING_GETS = {"/flush_cache", "/pause_generation", "/continue_generation",
                       "/release_memory_occupation", "/resume_memory_occupation",
                       "/get_weights_by_name", "/start_expert_distribution_record",
                       "/stop_expert_distribution_record", "/dump_expert_distribution_record"}
# routes that ignore their body and would act on any well-formed one: wrong types are not
# tried there (pausing would change what the probe generates meanwhile)
BODY_IGNORED = {"/pause_generation"}
RAW_BAD_BODIES = {  # (raw body, status) sent as application/json to every POST route
    "invalid JSON": (b'{"text": "unterminated', 400),
    "nested 100000 deep": (b"[" * 100_000, 400),
    "nested 60 deep": (b'{"a":' * 60 + b"1" + b"}" * 60, 400),
    "lone surrogate": (b'{"text": "a\\udc80b", "model": "m"}', 400),
    "not UTF-8": (b'{"text": "\xff\xfe"}', 400),
}
WRONG_TYPES = [[], "x", 7, None, True, [{"text": "a"}]]  # no route takes these as its body


def routes(http) -> list:
    spec = http.get("/openapi.json").json()
    out = []
    for path, methods in spec["paths"].items():
        concrete = path.replace("{model}", "some-model")
        out.extend((method.upper(), concrete) for method in methods)
    return sorted(out)


def probe(http) -> str:
    response = http.post("/generate", json=PROBE)
    assert response.status_code == 200, response.text
    return response.json()["text"]


def assert_4xx(response, case: str, status=None) -> None:
    assert 400 <= response.status_code < 500, (case, response.status_code, response.text[:300])
    if status is not None:
        assert response.status_code == status, (case, response.status_code, response.text[:300])
    body = response.json()
    assert body["error"]["message"], (case, body)


def restore(http) -> None:
    """Undo what a fuzzed request that was accepted may have switched."""
    for path in ("/continue_generation", "/resume_memory_occupation", "/stop_profile",
                 "/stop_expert_distribution_record"):
        http.post(path)


def test_fuzz_every_endpoint(http):
    before = probe(http)
    table = routes(http)
    assert len(table) > 40 and ("POST", "/generate") in table
    for method, path in table:
        case = f"{method} {path}"
        # cross-site: an Origin of another site, or the browser's Sec-Fetch-Site mark
        for headers in ({"origin": EVIL}, {"sec-fetch-site": "cross-site"}, {"origin": "null"}):
            response = http.request(method, path, headers=headers,
                                    **({"json": {}} if method == "POST" else {}))
            if method == "POST" or path in STATE_CHANGING_GETS:
                assert_4xx(response, f"{case} {headers}", 403)
            else:
                assert response.status_code < 500, (case, response.text[:300])
        if method != "POST":
            continue
        # bodies that are not JSON: a web page's text/plain or form POST
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": content_type} if content_type else {}
            response = http.post(path, content=json.dumps(PROBE).encode(), headers=headers)
            assert_4xx(response, f"{case} as {content_type}", 415)
        for name, (raw, status) in RAW_BAD_BODIES.items():
            response = http.post(path, content=raw, headers={"content-type": "application/json"})
            assert_4xx(response, f"{case} {name}", status)
        if path in BODY_IGNORED:
            continue
        for value in WRONG_TYPES:
            response = http.post(path, content=json.dumps(value).encode(),
                                 headers={"content-type": "application/json"})
            assert response.status_code < 500, (case, value, response.text[:300])
    restore(http)
    assert http.get("/health").status_code == 200
    assert probe(http) == before
    info = idle_server_info(http)
    assert info["num_running_reqs"] == 0 and info["num_queued_reqs"] == 0
    assert info["kv_used_tokens"] == info["kv_cached_tokens"]  # only the prefix cache holds KV


def test_strict_types_on_generation(http, model_name):
    cases = [
        ("/generate", {"input_ids": [True, False]}, 422, "input_ids"),
        ("/generate", {"input_ids": [[1, 2], [3, False]]}, 422, "input_ids"),
        ("/generate", {"text": "hi", "return_logprob": "yes"}, 422, "return_logprob"),
        ("/generate", {"text": "hi", "stream": "yes"}, 422, "stream"),
        ("/generate", {"text": "hi", "stream": 1}, 422, "stream"),
        ("/generate", {"text": "hi", "rid": 5}, 422, "rid"),
        ("/generate", {"text": "hi", "top_logprobs_num": "3"}, 422, "top_logprobs_num"),
        ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": True}}, 400,
         "sampling_params.max_new_tokens"),
        ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1e30}}, 400,
         "sampling_params.max_new_tokens"),
        ("/generate", {"text": "hi", "sampling_params": {"ignore_eos": "yes"}}, 400,
         "sampling_params.ignore_eos"),
        ("/generate", {"input_ids": [10 ** 12]}, 400, "input_ids"),
        ("/generate", {"input_ids": [-1]}, 400, "input_ids"),
        ("/v1/completions", {"model": model_name, "prompt": "hi", "stream": "yes"}, 422, "stream"),
        ("/v1/completions", {"model": model_name, "prompt": "hi", "max_tokens": True}, 422,
         "max_tokens"),
        ("/v1/completions", {"model": model_name, "prompt": [True]}, 422, "prompt"),
        ("/v1/chat/completions", {"model": model_name, "messages": [{"role": "user", "content": "hi"}],
                                  "logprobs": "yes"}, 422, "logprobs"),
        ("/abort_request", {"abort_all": "yes"}, 422, "abort_all"),
        ("/get_weights_by_name", {"name": "lm_head.weight", "truncate_size": 10 ** 12}, 422,
         "truncate_size"),
    ]
    for path, body, status, param in cases:
        response = http.post(path, json=body)
        assert_4xx(response, f"{path} {body}", status)
        assert response.json()["error"]["param"] == param, (body, response.json())
    assert http.get("/health").status_code == 200


def test_extreme_numbers_are_bounded(http, model_name):
    """Values at the edges of their types: each a 4xx or a bounded answer, and the engine
    computes the same afterwards (a bad value must not reach a forward step and crash it).
    A huge max_new_tokens is test_engine_guards.py's (on a short context)."""
    before = probe(http)
    huge = 10 ** 30
    bodies = [{"sampling_params": {"stop_token_ids": [10 ** 12], "min_new_tokens": 1}},
              {"sampling_params": {"top_k": huge}}, {"sampling_params": {"seed": huge}},
              {"sampling_params": {"seed": -huge}}, {"sampling_params": {"n": 10 ** 9}},
              {"sampling_params": {"temperature": 1e308}},
              {"sampling_params": {"logit_bias": {str(10 ** 12): 1.0}}},
              {"logprob_start_len": huge, "return_logprob": True}, {"top_logprobs_num": huge},
              {"return_logprob": True, "top_logprobs_num": 20, "logprob_start_len": 0}]
    for extra in bodies:
        body = {"text": "Hi", **extra}
        body["sampling_params"] = {"max_new_tokens": 2, **extra.get("sampling_params", {})}
        response = http.post("/generate", json=body)
        assert response.status_code < 500, (extra, response.text[:300])
    for extra in ({"n": huge}, {"logprobs": huge}, {"seed": huge},
                  {"top_k": huge}, {"stop_token_ids": [huge]}):
        response = http.post("/v1/completions", json={"model": model_name, "prompt": "Hi",
                                                       "max_tokens": 2, **extra})
        assert response.status_code < 500, (extra, response.text[:300])
    assert http.get("/health").status_code == 200
    assert probe(http) == before


def test_lone_surrogate_in_a_prompt_is_a_400(http, model_name):
    for path, raw in (("/generate", b'{"text": "hi \\ud800 there"}'),
                      ("/v1/completions", b'{"model": "%s", "prompt": "\\udfff"}' % model_name.encode()),
                      ("/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", '
                                               b'"content": "x\\ud83d"}]}'),
                      ("/tokenize", b'{"prompt": "\\ud800"}')):
        response = http.post(path, content=raw, headers={"content-type": "application/json"})
        assert_4xx(response, path, 400)
        assert "surrogate" in response.json()["error"]["message"]


class _Stream:
    """A streaming /generate held open after its first chunk, so that its rid is in flight."""

    def __init__(self, url: str, body: dict):
        self.client = httpx.Client(base_url=url, timeout=120)
        self.context = self.client.stream("POST", "/generate", json={**body, "stream": True})
        self.response = self.context.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self.lines = self.response.iter_lines()
        self.first = next(line for line in self.lines if line.startswith("data:"))

    def finish(self) -> list:
        events = [self.first] + [line for line in self.lines if line.startswith("data:")]
        self.context.__exit__(None, None, None)
        self.client.close()
        return events


def _last_text(events: list) -> str:
    payloads = [json.loads(e[5:]) for e in events if e.strip() != "data: [DONE]"]
    return payloads[-1]["text"] if isinstance(payloads[-1], dict) else payloads[-1]


def test_a_rid_in_flight_cannot_be_reused(server, http, model_name):
    long = {"text": "Write a long story about a dragon.", "rid": "hostile-rid",
            "sampling_params": {"max_new_tokens": 64, "temperature": 0, "ignore_eos": True}}
    alone = http.post("/generate", json={**long, "rid": None}).json()["text"]
    held = _Stream(server.url, long)
    try:
        other = http.post("/generate", json={"text": "Another prompt", "rid": "hostile-rid"})
        assert_4xx(other, "same rid", 400)
        error = other.json()["error"]
        assert error["param"] == "rid" and "hostile-rid" in error["message"]
        openai_route = http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                                          "max_tokens": 2, "rid": "hostile-rid"})
        assert_4xx(openai_route, "same rid on /v1/completions", 400)
        batch = http.post("/generate", json={"text": ["a", "b"], "rid": ["dup", "dup"]})
        assert_4xx(batch, "one rid twice in a batch", 400)
        http.post("/abort_request", json={"rid": "hostile-rid"})  # seen enough: end it early
    finally:
        events = held.finish()
    assert alone.startswith(_last_text(events))  # nothing of the refused requests leaked in
    again = http.post("/generate", json={**long, "sampling_params": {"max_new_tokens": 2}})
    assert again.status_code == 200  # once finished, the rid is free again


def test_the_samples_of_an_n_request_cannot_be_spelled(server, http):
    body = {"text": "List some fruits:", "rid": "grp",
            "sampling_params": {"n": 2, "max_new_tokens": 64, "temperature": 0.8, "seed": 3,
                                "ignore_eos": True}}
    held = _Stream(server.url, body)
    try:
        for rid in ("grp", "grp-0", "grp-1"):
            response = http.post("/generate", json={"text": "Other", "rid": rid,
                                                    "sampling_params": {"max_new_tokens": 2}})
            assert_4xx(response, rid, 400)
            assert rid in response.json()["error"]["message"]
        http.post("/abort_request", json={"rid": "grp"})  # reaches both samples
    finally:
        events = held.finish()
    finals = {}
    for e in events:
        if e.strip() != "data: [DONE]":
            chunk = json.loads(e[5:])
            finals[chunk["index"]] = chunk
    assert sorted(finals) == [0, 1]
    assert all(c["meta_info"]["finish_reason"]["type"] == "abort" for c in finals.values())
    # the other way round: a client's "grp-1" in flight blocks an n=2 request named "grp"
    held = _Stream(server.url, {"text": "Hello", "rid": "grp-1",
                                "sampling_params": {"max_new_tokens": 64, "ignore_eos": True}})
    try:
        response = http.post("/generate", json=body)
        assert_4xx(response, "n=2 over a rid in flight", 400)
        assert "grp-1" in response.json()["error"]["message"]
        http.post("/abort_request", json={"rid": "grp-1"})
    finally:
        held.finish()
    assert idle_server_info(http)["num_running_reqs"] == 0


def test_concurrent_same_rid_one_answer_each(server, http):
    """Many clients race with one rid: each gets its own full answer or a 400, none hangs."""
    body = {"text": "Count to ten:", "rid": "race",
            "sampling_params": {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True}}
    expected = http.post("/generate", json={**body, "rid": None}).json()["text"]
    answers = []

    def one():
        with httpx.Client(base_url=server.url, timeout=120) as c:
            answers.append(c.post("/generate", json=body))

    threads = [threading.Thread(target=one) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert time.monotonic() - started < 120 and len(answers) == 4
    ok = [a for a in answers if a.status_code == 200]
    assert ok and all(a.status_code in (200, 400) for a in answers)
    assert all(a.json()["text"] == expected for a in ok)
