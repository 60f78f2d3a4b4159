"""A real server process on the default model, shared by the whole API test session."""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx
import openai
import pytest

from rollserve.api.server import spawn_server, wait_until_healthy

# Small enough to keep the pool cheap on CPU; the body limit is lowered so that the
# 413 test does not have to send 32 MiB.
SERVER_ARGS = ["--max-total-tokens", "20000", "--enable-metrics",
               "--max-request-body-bytes", "2000000"]


@dataclass
class RunningServer:
    proc: object
    url: str
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def start_server(log_dir, name: str, extra_args=(), api_key=None, use_cli=False) -> RunningServer:
    log_path = os.path.join(str(log_dir), f"{name}.log")
    log_file = open(log_path, "w")
    argv = [*SERVER_ARGS, *extra_args]
    if use_cli:  # the console script instead of `python -m rollserve.launch_server`
        import subprocess

        from rollserve.api.server import free_port

        port = free_port()
        proc = subprocess.Popen([_rollserve_command(), "serve", "--port", str(port), *argv],
                                stdout=log_file, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
    else:
        proc, url = spawn_server(argv, log_file=log_file)
    try:
        wait_until_healthy(url, proc, timeout=300, api_key=api_key)
    except Exception:
        proc.kill()
        server = RunningServer(proc, url, log_path)
        raise RuntimeError(f"server {name} did not start:\n{server.log()[-3000:]}")
    return RunningServer(proc, url, log_path)


def stop_server(server: RunningServer) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(timeout=30)
        except Exception:
            server.proc.kill()


def _rollserve_command() -> str:
    """The `rollserve` console script installed next to this Python (pip install -e .)."""
    import sys

    script = os.path.join(os.path.dirname(sys.executable), "rollserve")
    assert os.path.exists(script), "rollserve is not installed: pip install -e . --no-deps"
    return script


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("server-logs"), "main")
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model_name(http) -> str:
    return http.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="session")
def tokenizer(http):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(http.get("/get_model_info").json()["model_path"])


def idle_server_info(http, timeout: float = 20.0) -> dict:
    """/get_server_info once no request is running or queued (or the last one seen)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        info = http.get("/get_server_info").json()
        if info["num_running_reqs"] == 0 and info["num_queued_reqs"] == 0:
            return info
        if time.monotonic() > deadline:
            return info
        time.sleep(0.1)


@pytest.fixture(scope="session")
def hf_model(http):
    """The served model in transformers, float32: the reference for logprob tests."""
    import torch
    from transformers import AutoModelForCausalLM

    path = http.get("/get_model_info").json()["model_path"]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
