"""SGLang's calls in SGLang's shape: /get_server_info's keys, GET and POST /flush_cache,
GET /v1/models/{id}; and a server started from an SGLang launch line (a --config file with
flags rollserve accepts as no-ops or at their defaults, an SGLang environment switch,
--allow-auto-truncate on a small context)."""

import os
import threading
import time

import httpx
import openai
import pytest

from rollserve.frontend.flag_table import CLI_ONLY
from rollserve.frontend.sglang_flags import SGLANG_FLAGS
from tests.api.conftest import idle_server_info, start_server, stop_server
from tests.api.test_errors import assert_error

pytestmark = pytest.mark.slow
CONTEXT = 64


def test_server_info_has_sglangs_keys(http, server):
    info = idle_server_info(http)
    expected = {f.dest for f in SGLANG_FLAGS if f.dest not in CLI_ONLY}
    assert expected - set(info) == set()
    for key in ("status", "max_total_num_tokens", "max_req_input_len", "internal_states",
                "version", "max_request_body_bytes", "kv_used_tokens", "weight_version"):
        assert key in info, key
    assert info["status"] == "ready" and info["max_total_num_tokens"] == 20000
    # flags rollserve does not implement say what applies here
    assert (info["tp_size"], info["dp_size"], info["page_size"]) == (1, 1, 1)
    assert info["kv_cache_dtype"] == "auto" and info["speculative_algorithm"] is None
    assert info["sampling_defaults"] == "openai" and info["grammar_backend"] == "xgrammar"
    state = info["internal_states"][0]
    assert state["memory_usage"]["token_capacity"] == 20000
    assert state["memory_usage"]["kvcache"] > 0 and state["memory_usage"]["weight"] > 0
    assert {"last_gen_throughput", "avg_spec_accept_length"} <= set(state)


def test_flush_cache_answers_get_and_post_as_sglang(http):
    for method in ("GET", "POST"):
        idle_server_info(http)
        response = http.request(method, "/flush_cache")
        assert response.status_code == 200, response.text
        assert response.text.startswith("Cache flushed.\n")
        assert response.headers["content-type"].startswith("text/plain")
    assert http.get("/flush_cache", params={"timeout": "5"}).status_code == 200
    assert_error(http.get("/flush_cache", params={"timeout": "-1"}), 400, "timeout", "timeout")


def test_flush_cache_while_busy_is_400_with_the_reason(http, server, model_name):
    body = {"model": model_name, "prompt": "Count to a thousand:", "max_tokens": 48,
            "ignore_eos": True, "temperature": 0}

    def busy():
        with httpx.Client(base_url=server.url, timeout=600) as own:
            own.post("/v1/completions", json=body)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while http.get("/get_server_info").json()["num_running_reqs"] == 0:
            assert time.monotonic() < deadline, "the request never started"
        busy = http.get("/flush_cache")
        assert busy.status_code == 400 and "running or queued" in busy.text
        # ?timeout= waits for the engine to go idle, then flushes
        assert http.post("/flush_cache", params={"timeout": "120"}).status_code == 200
    finally:
        worker.join()


def test_retrieve_a_model(http, client, model_name):
    card = http.get(f"/v1/models/{model_name}")  # the default model's name is a path
    assert card.status_code == 200
    assert card.json()["id"] == model_name and card.json()["object"] == "model"
    assert client.models.retrieve(model_name).id == model_name
    assert http.get("/v1/models/default").json()["id"] == model_name
    assert_error(http.get("/v1/models/gpt-5"), 404, "model", "does not exist")
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")


# ---- a server from an SGLang launch line ---------------------------------------------------------
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    logs = tmp_path_factory.mktemp("sglang-line")
    config = logs / "server.yaml"
    config.write_text("tp-size: 1\ndp-size: 1\nkv-cache-dtype: auto\npage-size: 1\n"
                      "enable-p2p-check: true\nskip-server-warmup: true\n"
                      "allow-auto-truncate: true\nchat-template: chatml\n")
    os.environ["SGL_ENABLE_JIT_DEEPGEMM"] = "1"  # the server process inherits it
    try:
        server = start_server(logs, "sglang-line", ["--config", str(config), "--context-length",
                                                     str(CONTEXT), "--trust-remote-code"])
    finally:
        del os.environ["SGL_ENABLE_JIT_DEEPGEMM"]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield server, client
    stop_server(server)


def test_an_sglang_launch_line_starts_and_says_what_it_ignored(launched):
    server, http = launched
    info = http.get("/get_server_info").json()
    assert info["allow_auto_truncate"] is True and info["chat_template"] == "chatml"
    assert info["context_length"] == CONTEXT and info["trust_remote_code"] is True
    log = server.log()
    assert "--enable-p2p-check: accepted with no effect" in log
    assert "--page-size 1: accepted, it asks for what rollserve does" in log
    assert info["tp_size"] == 1 and info["dp_size"] == 1
    assert "SGL_ENABLE_JIT_DEEPGEMM=1: no effect in rollserve" in log


def test_auto_truncate_leaves_room_for_the_output(launched):
    _, http = launched
    long_text = " ".join(["word"] * 200)
    out = http.post("/generate", json={"text": long_text, "sampling_params": {
        "max_new_tokens": 4, "ignore_eos": True, "temperature": 0}}).json()
    assert out["meta_info"]["prompt_tokens"] == CONTEXT - 4
    assert out["meta_info"]["completion_tokens"] == 4
    chat = http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": long_text}],
        "max_tokens": 8, "ignore_eos": True, "temperature": 0}).json()
    assert chat["usage"] == {**chat["usage"], "prompt_tokens": CONTEXT - 8, "completion_tokens": 8}
    # more output than half the context: the prompt keeps half, max_tokens is clipped
    chat = http.post("/v1/chat/completions", json={
        "model": "default", "messages": [{"role": "user", "content": long_text}],
        "max_tokens": 500, "ignore_eos": True, "temperature": 0}).json()
    assert chat["usage"]["prompt_tokens"] == CONTEXT // 2
    assert chat["usage"]["completion_tokens"] == CONTEXT - CONTEXT // 2
