"""Launch flags, the API key, clean shutdown on SIGTERM and the engine watchdog,
each on a server of its own."""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import psutil
import pytest

from rollserve.api.server import free_port
from tests.api.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

API_KEY = "test-secret-key"


def family(pid: int):
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def assert_all_gone(procs, timeout: float = 15.0) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    assert not alive, [p.pid for p in alive]


def test_unsupported_flag_is_refused():
    for argv in (["-m", "rollserve.cli", "serve", "--pp-size", "2"],
                 ["-m", "rollserve.launch_server", "--kv-cache-dtype", "fp8_e5m2"]):
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode != 0
        flag = argv[-2]
        assert done.stderr.startswith(f"error: {flag} {argv[-1]}: ") and "; instead: " in done.stderr


def test_bad_flag_value_is_refused():
    done = subprocess.run([sys.executable, "-m", "rollserve.cli", "serve", "--dtype", "int3"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "dtype" in done.stderr


def test_missing_model_fails_cleanly(tmp_path):
    done = subprocess.run([sys.executable, "-m", "rollserve.launch_server", "--port", str(free_port()),
                           "--model-path", str(tmp_path / "no-such-model")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1  # refused before anything starts, in one line
    assert done.stderr.startswith("error: --model-path: ") and "is not a folder" in done.stderr


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("keyed"), "keyed", ["--api-key", API_KEY],
                           use_cli=True)
    yield running
    stop_server(running)


def test_startup_log(keyed_server):
    log = keyed_server.log()
    assert "KV pool: 20000 tokens" in log
    server_lines = [line for line in log.splitlines() if " server] " in line]
    assert re.search(r"listening on http://127\.0\.0\.1:\d+$", server_lines[-1])


def test_api_key(keyed_server):
    url = keyed_server.url
    assert httpx.get(url + "/health").status_code == 200  # open, for load balancers
    for method, path in (("GET", "/v1/models"), ("POST", "/generate"), ("GET", "/get_server_info"),
                         ("GET", "/metrics"), ("POST", "/flush_cache"), ("GET", "/health_generate")):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
            response = httpx.request(method, url + path, headers=headers, json={"text": "hi"})
            assert response.status_code == 401, (path, headers)
            assert response.json()["error"]["type"] == "authentication_error"
    ok = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0)
    model = client.models.list().data[0].id
    out = client.chat.completions.create(model=model, max_tokens=3, temperature=0,
                                         messages=[{"role": "user", "content": "Hi"}])
    assert out.usage.completion_tokens >= 1


def test_server_info_hides_the_key(keyed_server):
    info = httpx.get(keyed_server.url + "/get_server_info",
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert API_KEY not in str(info)


def test_sigterm_stops_everything(keyed_server):
    """Even with a long stream in flight, SIGTERM ends the server (exit 0) and its children."""
    procs = family(keyed_server.proc.pid)
    assert len(procs) >= 3  # the server, the scheduler and the detokenizer at least
    seen = []

    def long_stream():
        body = {"text": "Go on forever.", "stream": True,
                "sampling_params": {"max_new_tokens": 4000, "ignore_eos": True}}
        try:
            with httpx.stream("POST", keyed_server.url + "/generate", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {API_KEY}"}) as response:
                for line in response.iter_lines():
                    seen.append(line)
        except httpx.HTTPError:
            pass  # the server went away mid-stream, as it should

    streamer = threading.Thread(target=long_stream)
    streamer.start()
    deadline = time.monotonic() + 20
    while not seen:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    keyed_server.proc.send_signal(signal.SIGTERM)
    assert keyed_server.proc.wait(timeout=30) == 0
    assert_all_gone(procs)
    streamer.join(timeout=10)
    assert not streamer.is_alive()


def test_watchdog_exits_when_the_scheduler_dies(tmp_path):
    running = start_server(tmp_path, "watchdog")
    try:
        procs = family(running.proc.pid)
        engine_children = [p for p in procs[1:] if "resource_tracker" not in " ".join(p.cmdline())]
        scheduler = max(engine_children, key=lambda p: p.memory_info().rss)  # holds model + KV
        os.kill(scheduler.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while httpx.get(running.url + "/health").status_code == 200:
            assert time.monotonic() < deadline, "/health never turned unhealthy"
            time.sleep(0.1)
        health = httpx.get(running.url + "/health")
        assert health.status_code == 503 and "died" in health.json()["error"]["message"]
        generate = httpx.post(running.url + "/generate", json={"text": "hi"})
        assert generate.status_code == 503
        assert running.proc.wait(timeout=30) == 1
        assert_all_gone(procs)
    finally:
        stop_server(running)
