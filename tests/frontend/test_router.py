"""`rollserve router` over two real tiny-model servers: each policy, the combined answer of
fanned-out control calls, worker management, and failover (a dead worker, then a worker
killed while requests run on it)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from rollserve.api.server import free_port, spawn_server, wait_until_healthy

pytestmark = pytest.mark.multiprocess

WORKER_ARGS = ["--max-total-tokens", "4096", "--log-level", "warning"]
GEN = {"temperature": 0, "max_new_tokens": 4}


@pytest.fixture(scope="module")
def workers(tiny_models, tmp_path_factory):
    logs = tmp_path_factory.mktemp("router_workers")
    procs = [spawn_server(["--model-path", tiny_models["llama"], *WORKER_ARGS],
                          log_file=open(logs / f"w{i}.log", "w")) for i in range(2)]
    try:
        for proc, url in procs:
            wait_until_healthy(url, proc, timeout=300)
    except Exception:
        for proc, _ in procs:
            proc.kill()
        raise
    yield procs
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def start_router(urls, policy, *extra):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rollserve.cli", "router", "--port", str(port),
                             "--policy", policy, "--worker-urls", *urls, *extra])
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, proc, timeout=60)
    return proc, url


@pytest.fixture
def router(workers):
    started = []

    def make(policy, extra_urls=(), *extra):
        proc, url = start_router([u for _, u in workers] + list(extra_urls), policy, *extra)
        started.append(proc)
        return url

    yield make
    for proc in started:
        proc.terminate()
        proc.wait(timeout=30)


def generate(url, text, params=GEN):
    r = httpx.post(f"{url}/generate", json={"text": text, "sampling_params": params}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def served(url):
    return [w["served"] for w in httpx.get(f"{url}/list_workers").json()["workers"]]


def test_round_robin_alternates(router):
    url = router("round_robin")
    for i in range(6):
        generate(url, f"prompt {i}")
    assert served(url) == [3, 3]
    info = httpx.get(f"{url}/get_server_info").json()
    assert info["dp_size"] == 2 and len(info["internal_states"]) == 2
    assert [w["healthy"] for w in info["workers"]] == [True, True]


def test_shortest_queue_spreads_concurrent_requests(router):
    url = router("shortest_queue")
    params = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: generate(url, f"load {i}", params), range(8)))
    assert all(n >= 2 for n in served(url)), served(url)


def test_cache_aware_sends_a_repeated_prefix_where_it_is_cached(router):
    url = router("cache_aware")
    groups = [f"Problem {g}: " + "a long shared question about numbers " * 8 for g in range(4)]
    cached = []
    for prompt in groups:  # a GRPO group: the same prompt four times
        outs = [generate(url, prompt) for _ in range(4)]
        cached += [o["meta_info"]["cached_tokens"] for o in outs[1:]]
    stats = httpx.get(f"{url}/list_workers").json()["cache_aware"]
    assert stats["hit_rate"] == 0.75  # every repeat routed to its group's worker
    assert all(c > 0 for c in cached)  # ... where the prefix really was cached
    assert all(n > 0 for n in served(url))  # and the groups spread over both workers


def test_streams_pass_through_the_router(router):
    url = router("round_robin")
    body = {"text": "stream me", "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}}
    chunks = []
    with httpx.stream("POST", f"{url}/generate", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:") and line != "data: [DONE]":
                chunks.append(json.loads(line[len("data:"):]))
    whole = generate(url, "stream me", body["sampling_params"])
    assert len(chunks) >= 2 and chunks[-1]["output_ids"] == whole["output_ids"]
    assert served(url) == [1, 1]  # the stream counted once it ended


def test_control_calls_fan_out_with_one_answer(router, tiny_models):
    url = router("round_robin")
    r = httpx.post(f"{url}/update_weights_from_disk",
                   json={"model_path": tiny_models["llama"], "weight_version": "v2"}, timeout=120)
    assert r.status_code == 200 and r.json()["success"], r.text
    assert len(r.json()["workers"]) == 2
    versions = {httpx.get(f"{w}/get_model_info").json().get("weight_version")
                for w in httpx.get(f"{url}/list_workers").json()["urls"]}
    assert versions == {"v2"}
    r = httpx.post(f"{url}/update_weights_from_disk", json={"model_path": "/no/such/ckpt"},
                   timeout=120)
    assert r.status_code >= 400 and r.json()["success"] is False
    assert r.json()["message"].startswith("no worker was updated: 2 of 2 workers failed: http:")
    assert httpx.post(f"{url}/flush_cache", timeout=60).json()["success"]


def test_a_disk_update_one_worker_refuses_updates_none(router, workers, tiny_models, tmp_path):
    """The workers serve different models here, so the llama checkpoint passes on one and is
    refused by the other (as a path missing on one machine would be): nobody is updated."""
    proc, other = spawn_server(["--model-path", tiny_models["qwen3"], *WORKER_ARGS],
                               log_file=open(tmp_path / "qwen3.log", "w"))
    try:
        wait_until_healthy(other, proc, timeout=300)
        first = workers[0][1]
        url = router("round_robin", [other])
        before = httpx.get(f"{first}/get_model_info").json()["weight_version"]
        r = httpx.post(f"{url}/update_weights_from_disk",
                       json={"model_path": tiny_models["llama"], "weight_version": "never"},
                       timeout=120)
        assert r.status_code == 400 and r.json()["success"] is False
        assert r.json()["message"].startswith("no worker was updated: 1 of 3 workers failed")
        assert other in r.json()["message"]
        assert httpx.get(f"{first}/get_model_info").json()["weight_version"] == before
        # validate_only alone: the check's answer, nothing written
        r = httpx.post(f"{first}/update_weights_from_disk",
                       json={"model_path": tiny_models["llama"], "weight_version": "x",
                             "validate_only": True}, timeout=120)
        assert r.json()["success"] and "nothing written" in r.json()["message"]
        assert httpx.get(f"{first}/get_model_info").json()["weight_version"] == before
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_workers_are_added_listed_and_removed(router, workers):
    url = router("round_robin")
    first = workers[0][1]
    assert httpx.post(f"{url}/remove_worker", params={"url": first}).json()["success"]
    assert httpx.get(f"{url}/list_workers").json()["urls"] == [workers[1][1]]
    generate(url, "only the second")
    assert httpx.post(f"{url}/add_worker", params={"url": "http://127.0.0.1:9"}).status_code == 400
    assert httpx.post(f"{url}/add_worker", params={"url": first}).json()["success"]
    assert len(httpx.get(f"{url}/list_workers").json()["urls"]) == 2


def test_a_dead_worker_is_skipped(router):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    url = router("round_robin", [dead])
    for i in range(6):
        generate(url, f"failover {i}")
    status = {w["url"]: w for w in httpx.get(f"{url}/list_workers").json()["workers"]}
    assert status[dead]["healthy"] is False and status[dead]["served"] == 0


def test_a_worker_killed_mid_load_loses_no_request(router, workers):
    """Last: it kills the second worker."""
    url = router("round_robin")
    params = {"temperature": 0, "max_new_tokens": 48, "ignore_eos": True}
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(generate, url, f"mid-load {i}", params) for i in range(12)]
        time.sleep(1.0)
        workers[1][0].kill()
        outs = [f.result() for f in futures]
    assert all(len(o["output_ids"]) == 48 for o in outs)
    # a request that reached the dead worker marked it down at once; if every request had
    # finished before the kill, the health check (every 5 s) marks it
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(f"{url}/list_workers").json()["workers"]
        if [w["healthy"] for w in status] == [True, False] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [w["healthy"] for w in status] == [True, False]
