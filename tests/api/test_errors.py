"""Bad requests get OpenAI-style error bodies naming the problem; disconnects abort
their request and free its KV; nothing a client sends harms the server."""

import time

import httpx
import openai
import pytest

from tests.api.conftest import idle_server_info

pytestmark = pytest.mark.slow


def assert_error(response: httpx.Response, status: int, param=None, says: str = ""):
    assert response.status_code == status, response.text
    body = response.json()
    error = body["error"]
    assert body["object"] == "error" and body["message"] == error["message"]
    assert error["code"] == status and error["type"]
    if param is not None:
        assert error["param"] == param, error
    assert says.lower() in error["message"].lower(), error["message"]


def chat_body(model_name, **kwargs):
    return {"model": model_name, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4, **kwargs}


def test_malformed_json(http):
    for path in ("/generate", "/v1/chat/completions", "/v1/completions"):
        response = http.post(path, content=b'{"text": "unterminated',
                             headers={"content-type": "application/json"})
        assert_error(response, 400, "body", "not valid JSON")


def test_wrong_types(http, model_name):
    assert_error(http.post("/v1/chat/completions", json=chat_body(model_name, temperature="hot")),
                 422, "temperature", "number")
    assert_error(http.post("/v1/chat/completions", json={"model": model_name, "messages": "hi"}),
                 422, "messages")
    assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": {"a": 1}}),
                 422, "prompt")
    assert_error(http.post("/generate", json={"text": 5}), 422, "text")
    assert_error(http.post("/generate", json={"text": "hi", "sampling_params": [1]}),
                 422, "sampling_params")
    assert_error(http.post("/generate", json={"text": "hi", "bogus_field": 1}), 422, "bogus_field")


def test_engine_validation_names_the_field(http, model_name):
    assert_error(http.post("/generate", json={"sampling_params": {}}), 400, "text", "exactly one")
    assert_error(http.post("/generate", json={"text": "hi", "sampling_params": {"temprature": 1}}),
                 400, "sampling_params.temprature", "unknown")
    assert_error(http.post("/generate", json={"text": "hi", "sampling_params": {"top_p": 0}}),
                 400, "sampling_params.top_p")
    assert_error(http.post("/v1/chat/completions", json=chat_body(model_name, top_p=1.5)),
                 400, "top_p")
    assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": "a",
                                                    "temperature": -1}), 400, "temperature")
    assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": [10 ** 9]}),
                 400, "prompt", "token ids")


def test_unknown_model(client, http):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert "gpt-17" in str(info.value)
    assert_error(http.post("/v1/completions", json={"model": "nope", "prompt": "x"}),
                 404, "model", "does not exist")


def test_prompt_over_context_length(client, model_name, http):
    info = http.get("/get_server_info").json()
    too_long = [100] * (info["max_req_input_len"] + 1)
    assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": too_long}),
                 400, "prompt", "maximum input length")
    assert_error(http.post("/generate", json={"input_ids": too_long}), 400, "input_ids")
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model_name, max_tokens=2, messages=[
            {"role": "user", "content": "hello " * (info["max_req_input_len"] + 10)}])
    assert err.value.body["param"] == "messages"


def test_n_and_max_tokens_out_of_range(http, model_name):
    for n in (0, 1000):
        assert_error(http.post("/v1/chat/completions", json=chat_body(model_name, n=n)), 400, "n")
    assert_error(http.post("/v1/chat/completions", json=chat_body(model_name, max_tokens=-1)),
                 400, "max_tokens")
    assert_error(http.post("/v1/chat/completions",
                           json=chat_body(model_name, max_completion_tokens=10 ** 6)),
                 400, "max_completion_tokens", "maximum context length")
    assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                                    "max_tokens": 10 ** 6}),
                 400, "max_tokens", "maximum context length")
    assert_error(http.post("/v1/chat/completions", json=chat_body(model_name, logprobs=True,
                                                                  top_logprobs=99)),
                 400, "top_logprobs")
    assert_error(http.post("/v1/chat/completions",
                           json={"model": model_name, "messages": [], "max_tokens": 2}),
                 400, "messages")
    assert_error(http.post("/v1/chat/completions", json={
        "model": model_name, "max_tokens": 2, "messages": [{"role": "wizard", "content": "x"}]}),
        400, "messages[0].role")


def test_unsupported_features_are_refused(http, model_name):
    tool = {"type": "function", "function": {"name": "f", "parameters": {}}}
    assert_error(http.post("/v1/chat/completions", json=chat_body(
        model_name, tools=[tool], tool_choice={"type": "function", "function": {"name": "g"}})),
                 400, "tool_choice", "'g'")
    assert_error(http.post("/v1/chat/completions", json=chat_body(
        model_name, response_format={"type": "xml"})), 400, "response_format.type")
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    assert_error(http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 2,
                                                         "messages": [image]}),
                 400, "messages[0].content", "takes text only")
    for field, value in (("suffix", "end"), ("best_of", 3)):
        assert_error(http.post("/v1/completions", json={"model": model_name, "prompt": "x",
                                                        field: value}), 400, field)


def test_body_too_large(http):
    big = "x" * 2_100_000  # the test server's --max-request-body-bytes is 2,000,000
    assert_error(http.post("/generate", json={"text": big}), 413, says="limit")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(30):
            yield b"x" * 100_000

    assert_error(http.post("/generate", content=chunks(),
                           headers={"content-type": "application/json"}), 413)


def test_unknown_route_and_method(http):
    assert_error(http.get("/v2/nothing"), 404)
    assert_error(http.get("/generate"), 405)


def test_abort_request_without_a_target_is_a_noop(http):
    # SGLang answers 200 and aborts nothing (verl sends rid="" and abort_all=false by default)
    response = http.post("/abort_request", json={})
    assert response.status_code == 200 and "nothing to abort" in response.json()["message"]


def _wait_running(http, at_least=1, timeout=20.0):
    deadline = time.monotonic() + timeout
    while http.get("/get_server_info").json()["num_running_reqs"] < at_least:
        assert time.monotonic() < deadline, "the request never started"
        time.sleep(0.05)


def _assert_released(http):
    info = idle_server_info(http)
    assert info["num_running_reqs"] == 0 and info["num_queued_reqs"] == 0
    flushed = http.post("/flush_cache")  # refused while any request still holds slots
    assert flushed.status_code == 200, flushed.text
    assert http.get("/get_server_info").json()["kv_used_tokens"] == 0


def test_disconnect_mid_stream_aborts(server, http, model_name):
    body = chat_body(model_name, max_tokens=4000, stream=True, ignore_eos=True)
    with httpx.Client(base_url=server.url, timeout=60) as own:
        with own.stream("POST", "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
    assert any(line.startswith("data: ") for line in received)
    _assert_released(http)


def test_disconnect_while_waiting_aborts(server, http):
    body = {"text": "Tell me everything.", "sampling_params": {"max_new_tokens": 4000,
                                                               "ignore_eos": True}}
    with httpx.Client(base_url=server.url, timeout=httpx.Timeout(60, read=1.5)) as own:
        with pytest.raises(httpx.ReadTimeout):
            own.post("/generate", json=body)
    _assert_released(http)


def test_server_survives_everything(http, client, model_name):
    """After all of the above, the server is healthy and answers correctly."""
    assert http.get("/health").status_code == 200
    out = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=16)
    assert "Paris" in out.choices[0].message.content
