"""`rollserve serve --tp-size 3` on the real SmolLM2-135M (9 query heads, 3 KV heads, a
vocabulary of 49152): three scheduler processes over gloo answer the README's question
as one process does, and generate transformers' greedy tokens."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import torch

from rollserve.api.server import free_port, wait_until_healthy

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

PROMPTS = ["The three primary colors are", "def fibonacci(n):", "The largest ocean on Earth is the"]


@pytest.fixture(scope="module")
def tp3_server(tmp_path_factory):
    log = open(tmp_path_factory.mktemp("tp3") / "server.log", "w+")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rollserve.cli", "serve", "--tp-size", "3",
                             "--port", str(port), "--max-total-tokens", "4096"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proc, timeout=300)
    except Exception:
        proc.kill()
        log.seek(0)
        raise RuntimeError(f"the tp 3 server did not start:\n{log.read()[-3000:]}")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_tp3_answers_the_readme_question(tp3_server):
    body = {"model": "default", "temperature": 0, "max_tokens": 32,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    out = httpx.post(f"{tp3_server}/v1/chat/completions", json=body, timeout=120).json()
    assert "Paris" in out["choices"][0]["message"]["content"]
    info = httpx.get(f"{tp3_server}/get_server_info", timeout=30).json()
    assert info["tp_size"] == 3 and info["nnodes"] == 1 and info["node_rank"] == 0


def test_tp3_greedy_tokens_and_logprobs_match_transformers(tp3_server, default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    outs = httpx.post(f"{tp3_server}/generate", timeout=120, json={
        "text": PROMPTS, "return_logprob": True,
        "sampling_params": {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}}).json()
    for prompt, out in zip(PROMPTS, outs):
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, pad_token_id=0, output_scores=True,
                              return_dict_in_generate=True)
        assert out["output_ids"] == ref.sequences[0, len(ids):].tolist(), prompt
        want = [torch.log_softmax(s[0].float(), -1)[t].item()
                for s, t in zip(ref.scores, out["output_ids"])]
        got = [lp[0] for lp in out["meta_info"]["output_token_logprobs"]]
        assert max(abs(a - b) for a, b in zip(got, want)) < 1e-4
