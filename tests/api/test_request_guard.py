"""The request guard's rules (api/request_guard.py) and the JSON checks (api/body.py), without
a server; tests/api/test_hostile_clients.py tries the same against a running one."""

import json

import pytest
from pydantic import BaseModel

from rollserve.api.body import MAX_JSON_DEPTH, check_json_value, load_json, validate_body
from rollserve.api.protocol import ApiError
from rollserve.api.request_guard import changes_state, cross_site_reason, has_body, is_json_type


def test_cross_site_requests_are_recognised():
    own = {"host": "127.0.0.1:30000"}
    assert cross_site_reason(own) is None  # a program: no Origin, no Sec-Fetch-Site
    assert cross_site_reason({**own, "origin": "http://127.0.0.1:30000"}) is None
    assert cross_site_reason({**own, "sec-fetch-site": "same-origin"}) is None
    assert "Sec-Fetch-Site" in cross_site_reason({**own, "sec-fetch-site": "cross-site"})
    assert cross_site_reason({**own, "sec-fetch-site": "same-site"})  # localhost:3000's page
    assert cross_site_reason({**own, "sec-fetch-site": "none"}) is None  # typed in the URL bar
    assert "evil" in cross_site_reason({**own, "origin": "https://evil.example"})
    assert cross_site_reason({**own, "origin": "http://127.0.0.1:8080"})  # another port
    assert cross_site_reason({**own, "origin": "null"})  # sandboxed frames, file:// pages


def test_state_changing_requests():
    for method, path in (("POST", "/generate"), ("POST", "/health"), ("GET", "/flush_cache"),
                         ("GET", "/pause_generation"), ("GET", "/release_memory_occupation"),
                         ("DELETE", "/v1/models")):
        assert changes_state(method, path), (method, path)
    for method, path in (("GET", "/health"), ("GET", "/get_server_info"), ("HEAD", "/generate"),
                         ("GET", "/v1/models/some/model"), ("GET", "/metrics")):
        assert not changes_state(method, path), (method, path)


def test_json_content_types():
    for ok in ("application/json", "application/json; charset=utf-8", "Application/JSON",
               "application/merge-patch+json"):
        assert is_json_type(ok)
    for bad in ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                "text/json-ish"):
        assert not is_json_type(bad)
    assert has_body({"content-length": "3"}) and has_body({"transfer-encoding": "chunked"})
    assert not has_body({"content-length": "0"}) and not has_body({})


def test_depth_limit_and_lone_surrogates():
    for raw in (b"[" * 100_000, b'{"a":' * 100_000, b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)):
        with pytest.raises(ApiError) as e:
            load_json(raw)
        assert e.value.status == 400 and "nested" in e.value.message
    ok = json.dumps({"messages": [{"content": [{"type": "text", "text": "hi"}]}]}).encode()
    assert load_json(ok)["messages"][0]["content"][0]["text"] == "hi"
    with pytest.raises(ApiError) as e:
        load_json(b'{"text": "ab\\ud800cd"}')
    assert e.value.status == 400 and e.value.param == "text" and "surrogate" in e.value.message
    assert check_json_value({"text": "\U0001F600 paired \ud83d\ude00".encode("utf-16", "surrogatepass")
                             .decode("utf-16")}) is None
    assert check_json_value({"ok": [1, {"nested": ["\udfff"]}]})[0] == "ok"
    with pytest.raises(ApiError) as e:
        load_json(b"\xff\xfe not utf-8")
    assert e.value.status == 400


class _Body(BaseModel):
    stream: bool = False
    max_tokens: int = 1
    temperature: float = 1.0


def test_types_are_strict():
    assert validate_body({"temperature": 1, "max_tokens": 3}, _Body).temperature == 1.0
    for bad, field in (({"stream": "yes"}, "stream"), ({"stream": 1}, "stream"),
                       ({"max_tokens": True}, "max_tokens"), ({"max_tokens": "5"}, "max_tokens"),
                       ({"max_tokens": 2.0}, "max_tokens")):
        with pytest.raises(ApiError) as e:
            validate_body(bad, _Body)
        assert e.value.status == 422 and e.value.param == field
