"""SGLang-native endpoints on a real server: /generate (whole, batch, stream, logprobs),
info, health, cache, abort and metrics."""

import json
import threading
import time

import pytest

from tests.api.conftest import idle_server_info

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "max_new_tokens": 6}


def sse_payloads(response) -> list:
    """Checks SSE framing (each event one `data: ` line, then a blank line, last
    event [DONE]) and returns the decoded payloads before [DONE]."""
    body = response.text
    assert body.endswith("data: [DONE]\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[len("data: "):]) for e in events[:-1]]


def test_generate_text(http):
    out = http.post("/generate", json={"text": "The capital of France is",
                                       "sampling_params": GREEDY}).json()
    meta = out["meta_info"]
    assert "Paris" in out["text"]
    assert meta["completion_tokens"] == len(out["output_ids"]) <= 6
    assert meta["prompt_tokens"] > 0
    assert meta["finish_reason"]["type"] in ("stop", "length")


def test_generate_input_ids_matches_text(http, tokenizer):
    text = "One, two, three,"
    by_text = http.post("/generate", json={"text": text, "sampling_params": GREEDY}).json()
    by_ids = http.post("/generate", json={"input_ids": tokenizer.encode(text),
                                          "sampling_params": GREEDY}).json()
    assert by_ids["output_ids"] == by_text["output_ids"]
    assert by_ids["text"] == by_text["text"]


def test_generate_batch_keeps_order(http):
    prompts = ["The capital of France is", "1, 2, 3, 4,", "The color of the sky is"]
    outs = http.post("/generate", json={"text": prompts, "sampling_params": GREEDY}).json()
    assert isinstance(outs, list) and len(outs) == 3
    for prompt, out in zip(prompts, outs):
        single = http.post("/generate", json={"text": prompt, "sampling_params": GREEDY}).json()
        assert out["output_ids"] == single["output_ids"]


def test_generate_stream_sse(http):
    params = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
    whole = http.post("/generate", json={"text": "Once upon a time", "sampling_params": params}).json()
    response = http.post("/generate", json={"text": "Once upon a time", "sampling_params": params,
                                            "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks = sse_payloads(response)
    assert len(chunks) >= 2
    counts = [c["meta_info"]["completion_tokens"] for c in chunks]
    assert counts == sorted(counts) and counts[-1] == 8
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"
    assert chunks[-1]["text"] == whole["text"]  # cumulative text, as SGLang streams it


def test_generate_logprobs(http, tokenizer):
    ids = tokenizer.encode("The quick brown fox jumps")
    out = http.post("/generate", json={
        "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 3},
        "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2,
        "return_text_in_logprobs": True}).json()
    meta = out["meta_info"]
    prompt_lp = meta["input_token_logprobs"]
    assert [t for _, t, _ in prompt_lp] == ids
    assert prompt_lp[0][0] is None and all(lp <= 0 for lp, _, _ in prompt_lp[1:])
    output_lp = meta["output_token_logprobs"]
    assert [t for _, t, _ in output_lp] == out["output_ids"]
    for (lp, token, text), top in zip(output_lp, meta["output_top_logprobs"]):
        assert len(top) == 2
        assert top[0][1] == token and top[0][0] == pytest.approx(lp)  # greedy = the top choice
        assert text == tokenizer.decode([token])


def test_model_and_server_info(http, server):
    model = http.get("/get_model_info").json()
    assert model["is_generation"] is True
    assert model["model_path"].endswith("SmolLM2-135M-Instruct")
    assert model["tokenizer_path"]
    info = http.get("/get_server_info").json()
    assert info["max_total_num_tokens"] == 20000
    assert info["max_req_input_len"] > 0
    assert info["enable_metrics"] is True and info["schedule_policy"] == "fcfs"
    assert "last_gen_throughput" in info and info["version"]
    assert info["port"] == int(server.url.rsplit(":", 1)[1])


def test_health_and_health_generate(http):
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200


def test_flush_cache_releases_kv(http):
    http.post("/generate", json={"text": "Cache me if you can", "sampling_params": GREEDY})
    assert idle_server_info(http)["kv_used_tokens"] > 0  # the radix cache keeps the prefix
    response = http.post("/flush_cache")
    assert response.status_code == 200 and response.text.startswith("Cache flushed.")
    assert http.get("/get_server_info").json()["kv_used_tokens"] == 0


def test_profile_by_steps_and_by_stop(http, tmp_path):
    out = tmp_path / "profiles"
    started = http.post("/start_profile", json={"output_dir": str(out), "num_steps": 2,
                                                "activities": ["CPU"], "profile_prefix": "a-"})
    assert started.status_code == 200 and started.json()["success"]
    busy = http.post("/start_profile", json={"output_dir": str(out)})
    assert busy.status_code == 400 and "already running" in busy.json()["message"]
    http.post("/generate", json={"text": "Profile these steps", "sampling_params": GREEDY})
    # it stops by itself after 2 steps; the files are written after the step's outputs left
    deadline = time.monotonic() + 30
    while not list(out.glob("a-*.kernels.txt")) or not list(out.glob("a-*.kernels.txt"))[0].stat().st_size:
        assert time.monotonic() < deadline, "no profile written"
        time.sleep(0.1)
    assert "Self CPU" in next(out.glob("a-*.kernels.txt")).read_text()
    assert len(list(out.glob("a-*.trace.json.gz"))) == 1
    assert http.post("/stop_profile").status_code == 400  # nothing running any more

    assert http.post("/start_profile", json={"output_dir": str(out), "profile_prefix": "b-"}).json()["success"]
    http.post("/generate", json={"text": "More steps", "sampling_params": GREEDY})
    stopped = http.post("/stop_profile").json()
    assert stopped["success"] and len(stopped["files"]) == 2
    assert all(str(out) in f and "/b-" in f for f in stopped["files"])


@pytest.mark.parametrize("body, field", [({"num_steps": 0}, "num_steps"),
                                         ({"activities": ["TPU"]}, "activities"),
                                         ({"num_steps": "many"}, "num_steps")])
def test_bad_profile_request_names_the_field(http, body, field):
    response = http.post("/start_profile", json=body)
    assert response.status_code in (400, 422) and field in response.text


def test_abort_request_by_rid(http):
    result = {}

    def long_request():
        result["out"] = http.post("/generate", json={
            "text": "Write a long story.", "rid": "abort-me",
            "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}).json()

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 20
    while http.get("/get_server_info").json()["num_running_reqs"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert http.post("/abort_request", json={"rid": "abort-me"}).json()["success"]
    worker.join(timeout=30)
    meta = result["out"]["meta_info"]
    assert meta["finish_reason"]["type"] == "abort"
    assert meta["completion_tokens"] < 4000
    assert idle_server_info(http)["num_running_reqs"] == 0


def test_abort_all(http):
    outs = []

    def long_request(i):
        outs.append(http.post("/generate", json={
            "text": f"Story number {i}:", "sampling_params": {"max_new_tokens": 4000,
                                                              "ignore_eos": True}}).json())

    workers = [threading.Thread(target=long_request, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 20
    while http.get("/get_server_info").json()["num_running_reqs"] < 3:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert http.post("/abort_request", json={"abort_all": True}).status_code == 200
    for w in workers:
        w.join(timeout=30)
    assert [o["meta_info"]["finish_reason"]["type"] for o in outs] == ["abort"] * 3


def parse_prometheus(text: str) -> dict:
    """{metric name: {label string: value}} from the text exposition format."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        out.setdefault(name, {})[labels.rstrip("}")] = float(value)
    return out


def test_metrics(http):
    http.post("/generate", json={"text": "Count: 1, 2,", "sampling_params": GREEDY})
    http.post("/generate", json={"text": "Count: 1, 2,", "sampling_params": GREEDY, "stream": True})
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    metrics = parse_prometheus(response.text)

    def value(name: str) -> float:
        (only,) = metrics["rollserve:" + name].values()
        return only

    assert value("prompt_tokens_total") > 0 and value("generation_tokens_total") > 0
    assert value("num_running_reqs") == 0 and value("num_queue_reqs") == 0
    assert 0 <= value("token_usage") <= 1
    assert value("cache_hit_rate") > 0  # the second request reused the first's prompt
    for hist in ("time_to_first_token_seconds", "inter_token_latency_seconds"):
        count = value(hist + "_count")
        assert count >= 2
        buckets = metrics[f"rollserve:{hist}_bucket"]
        inf = [v for labels, v in buckets.items() if 'le="+Inf"' in labels]
        assert inf == [count]
        assert list(buckets.values()) == sorted(buckets.values())  # cumulative
