"""Issue #14 on a server of its own, with short limits (a 32-token context, --dist-timeout 3,
SGLANG_HEALTH_CHECK_TIMEOUT=3, --shutdown-grace-period 2): output capped by the context,
admin calls that cannot stall generation, /health that sees a stopped scheduler, and a
SIGTERM that drains and then answers every request with an error. The tests run in order;
the last one stops the server."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import psutil
import pytest

from rollserve.api.server import free_port
from tests.api.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

CONTEXT = 32
STALL_S = 3


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    before = os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT")
    os.environ["SGLANG_HEALTH_CHECK_TIMEOUT"] = str(STALL_S)
    try:
        running = start_server(tmp_path_factory.mktemp("guarded"), "guarded",
                               ["--context-length", str(CONTEXT), "--dist-timeout", "3",
                                "--shutdown-grace-period", "2"])
    finally:
        if before is None:
            os.environ.pop("SGLANG_HEALTH_CHECK_TIMEOUT")
        else:
            os.environ["SGLANG_HEALTH_CHECK_TIMEOUT"] = before
    yield running
    stop_server(running)


@pytest.fixture
def http(guarded):
    with httpx.Client(base_url=guarded.url, timeout=300) as client:
        yield client


def scheduler_of(server) -> psutil.Process:
    children = [p for p in psutil.Process(server.proc.pid).children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())]
    return max(children, key=lambda p: p.memory_info().rss)  # it holds the model and the KV


def test_max_new_tokens_is_capped_by_the_context(http):
    body = {"text": "Once upon a time", "sampling_params": {
        "max_new_tokens": 10 ** 12, "min_new_tokens": 10 ** 9, "ignore_eos": True, "temperature": 0}}
    response = http.post("/generate", json=body)
    assert response.status_code == 200, response.text
    meta = response.json()["meta_info"]
    assert meta["prompt_tokens"] + meta["completion_tokens"] == CONTEXT
    assert meta["finish_reason"]["type"] == "length"
    info = http.get("/get_server_info").json()
    assert info["num_running_reqs"] == 0 and info["kv_used_tokens"] == info["kv_cached_tokens"]


def test_nonsense_group_arguments_are_refused_at_once(http):
    base = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1,
            "world_size": 2, "backend": "gloo"}
    for change, field in (({"master_port": 0}, "master_port"), ({"world_size": -2}, "world_size"),
                          ({"rank_offset": 0}, "rank_offset"), ({"master_address": ""}, "master_address")):
        started = time.monotonic()
        response = http.post("/init_weights_update_group", json={**base, **change})
        assert response.status_code == 400 and field in response.json()["message"], response.text
        assert time.monotonic() - started < STALL_S
    response = http.post("/init_weights_update_group", json={**base, "world_size": "2"})
    assert response.status_code == 422  # strict: a string is not a number


def test_a_group_join_does_not_stall_generation(http, guarded):
    body = {"master_address": "127.0.0.1", "master_port": free_port(), "rank_offset": 1,
            "world_size": 2, "group_name": "never", "backend": "gloo"}
    answer = {}

    def join():
        with httpx.Client(base_url=guarded.url, timeout=300) as c:
            answer["response"] = c.post("/init_weights_update_group", json=body)
            answer["at"] = time.monotonic()

    joining = threading.Thread(target=join)
    joining.start()
    time.sleep(0.5)
    generated = http.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 2}})
    generated_at = time.monotonic()
    assert generated.status_code == 200
    assert http.get("/health").status_code == 200
    joining.join(timeout=300)
    response = answer["response"]
    assert response.status_code == 400 and "could not join" in response.json()["message"]
    if answer["at"] - generated_at < 0:
        pytest.fail("the join answered before generation did: it held the scheduler")
    # the failed join left nothing behind: the same group can be tried again
    again = http.post("/init_weights_update_group", json={**body, "master_port": 0})
    assert "already exists" not in again.json()["message"]


def test_a_trainer_that_never_broadcasts_does_not_stall_generation(http, guarded):
    """update_weights_from_distributed receives beside generation: a trainer that calls it
    and never broadcasts gets a 400 after --dist-timeout, the group is reported broken, and
    other clients' requests run meanwhile."""
    from rollserve.weight_sync import distributed

    port, answer = free_port(), {}
    joined = {}
    joining = threading.Thread(target=lambda: joined.update(r=httpx.post(
        guarded.url + "/init_weights_update_group", timeout=300, json={
            "master_address": "127.0.0.1", "master_port": port, "rank_offset": 1,
            "world_size": 2, "group_name": "silent", "backend": "gloo"})))
    joining.start()
    group = distributed.init_custom_process_group("gloo", "127.0.0.1", port, 2, 0, "silent")
    joining.join(timeout=300)
    assert joined["r"].status_code == 200, joined["r"].text
    bucket = {"names": ["model.norm.weight"], "dtypes": ["float32"], "shapes": [[8]],
              "group_name": "silent"}

    def update():
        with httpx.Client(base_url=guarded.url, timeout=300) as c:
            answer["response"] = c.post("/update_weights_from_distributed", json=bucket)
            answer["at"] = time.monotonic()

    try:
        started = time.monotonic()
        updating = threading.Thread(target=update)
        updating.start()
        time.sleep(0.3)
        for _ in range(3):
            generated = http.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 2}})
            assert generated.status_code == 200
        assert http.get("/health").status_code == 200
        assert updating.is_alive(), "the update answered before its --dist-timeout"
        updating.join(timeout=300)
        response = answer["response"]
        assert response.status_code == 400, response.text
        message = response.json()["message"]
        assert "--dist-timeout" in message and "destroy_weights_update_group" in message
        assert 2 < answer["at"] - started < 60
        again = http.post("/update_weights_from_distributed", json=bucket)
        assert again.status_code == 400 and "broken" in again.json()["message"]
    finally:
        assert http.post("/destroy_weights_update_group", json={"group_name": "silent"}).status_code == 200
        distributed.destroy_process_group(group)


def test_health_sees_a_stopped_scheduler(http, guarded):
    scheduler = scheduler_of(guarded)
    scheduler.suspend()  # SIGSTOP: the process is there, but answers nothing
    try:
        deadline = time.monotonic() + STALL_S + 15
        while (health := http.get("/health")).status_code == 200:
            assert time.monotonic() < deadline, "/health stayed 200 with the scheduler stopped"
            time.sleep(0.2)
        assert health.status_code == 503 and "not answered" in health.json()["error"]["message"]
        for method, path, body in (("GET", "/get_server_info", None),
                                   ("POST", "/generate", {"text": "hi"}),
                                   ("POST", "/flush_cache", None)):
            started = time.monotonic()
            response = http.request(method, path, json=body)
            assert response.status_code == 503, (path, response.text)
            assert "not answered" in response.json()["error"]["message"]
            assert time.monotonic() - started < STALL_S + 10
    finally:
        scheduler.resume()
    deadline = time.monotonic() + 30
    while http.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "/health did not recover after SIGCONT"
        time.sleep(0.2)
    assert http.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}}).status_code == 200


def test_sigterm_drains_then_answers_each_request_with_an_error(http, guarded):
    ipc_dirs = {os.path.dirname(c.laddr) for c in scheduler_of(guarded).net_connections(kind="unix")
                if c.laddr and "rollserve-" in c.laddr}
    assert ipc_dirs and all(os.path.isdir(d) for d in ipc_dirs)
    body = {"text": "Tell a long story.", "stream": True,
            "sampling_params": {"max_new_tokens": 20, "ignore_eos": True}}
    lines = []
    with httpx.Client(base_url=guarded.url, timeout=300) as streaming, \
            streaming.stream("POST", "/generate", json=body) as stream:
        events = stream.iter_lines()
        lines.append(next(line for line in events if line.startswith("data:")))
        # paused in place (kept, not aborted), the stream cannot finish within the grace
        # period: it must end with an error
        assert http.post("/pause_generation", json={"mode": "in_place"}).status_code == 200
        waiting = {}
        plain = threading.Thread(target=lambda: waiting.update(r=httpx.post(
            guarded.url + "/generate", json={"text": "Hello", "sampling_params": {"max_new_tokens": 4}},
            timeout=300)))
        plain.start()
        time.sleep(0.5)
        guarded.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = http.post("/generate", json={"text": "late"})
        assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
        lines.extend(line for line in events if line.startswith("data:"))
    plain.join(timeout=30)
    answer = waiting["r"]
    assert answer.status_code == 503 and "shutting down" in answer.json()["error"]["message"]
    assert lines[-1].strip() == "data: [DONE]"
    error = json.loads(lines[-2][5:])
    assert error["error"]["code"] == 503 and "grace period" in error["error"]["message"]
    assert guarded.proc.wait(timeout=30) == 0
    assert not any(os.path.exists(d) for d in ipc_dirs)
