"""Two "nodes" on one machine over loopback: `--tp-size 2 --nnodes 2`, node 0 serving HTTP
with TP rank 0, node 1 running only TP rank 1. Greedy tokens equal transformers'."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import torch

from rollserve.api.server import free_port, wait_until_healthy

pytestmark = pytest.mark.multiprocess


def test_two_nodes_over_loopback_serve_one_replica(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["llama"]
    port, dist = free_port(), f"127.0.0.1:{free_port()}"
    common = ["--model-path", path, "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", dist,
              "--max-total-tokens", "4096", "--log-level", "warning"]
    logs = [open(tmp_path / f"node{i}.log", "w+") for i in range(2)]
    nodes = [subprocess.Popen([sys.executable, "-m", "rollserve.cli", "serve", *common,
                               "--node-rank", str(i), "--port", str(port)],
                              stdout=logs[i], stderr=subprocess.STDOUT) for i in (1, 0)]
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(url, nodes[1], timeout=300)
        except Exception:
            text = []
            for log in logs:
                log.seek(0)
                text.append(log.read()[-2000:])
            raise RuntimeError("the two nodes did not start:\n" + "\n---\n".join(text))
        prompt = "The three primary colors are"
        out = httpx.post(f"{url}/generate", timeout=120, json={
            "text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 10,
                                                "ignore_eos": True}}).json()
        tok = AutoTokenizer.from_pretrained(path)
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10,
                              do_sample=False, pad_token_id=0)
        assert out["output_ids"] == ref[0, len(ids):].tolist()
        info = httpx.get(f"{url}/get_server_info").json()
        assert info["tp_size"] == 2 and info["nnodes"] == 2 and info["node_rank"] == 0
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                node.kill()
