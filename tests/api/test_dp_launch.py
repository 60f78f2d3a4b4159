"""`rollserve serve --dp-size 2`: two replicas behind the router on one port, a load spread
over both, one /get_server_info for the pair; with a draft model each replica drafts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import pytest

from rollserve.api.server import spawn_server, wait_until_healthy

pytestmark = pytest.mark.multiprocess


@contextmanager
def dp2_server(model: str, log_path, *flags: str):
    """`rollserve serve --dp-size 2` (round robin) with `flags`; yields its URL."""
    log = open(log_path, "w+")
    proc, url = spawn_server(["--model-path", model, "--dp-size", "2",
                              "--load-balance-method", "round_robin", "--max-total-tokens", "4096",
                              "--log-level", "warning", *flags], log_file=log)
    try:
        try:
            wait_until_healthy(url, proc, timeout=300)
        except Exception:
            log.seek(0)
            raise RuntimeError(f"--dp-size 2 {' '.join(flags)} did not start:\n{log.read()[-3000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_dp2_spreads_a_load_over_both_replicas(tiny_models, tmp_path):
    with dp2_server(tiny_models["llama"], tmp_path / "dp2.log") as url:
        body = {"sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}}
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: httpx.post(f"{url}/generate", timeout=120,
                                                      json={**body, "text": f"load {i}"}),
                                 range(8)))
        assert all(r.status_code == 200 and len(r.json()["output_ids"]) == 8 for r in outs)
        workers = httpx.get(f"{url}/list_workers").json()["workers"]
        assert [w["served"] for w in workers] == [4, 4]
        info = httpx.get(f"{url}/get_server_info").json()
        assert info["dp_size"] == 2 and len(info["internal_states"]) == 2
        chat = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "model": "default", "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_dp2_replicas_each_draft_with_an_eagle_head(tiny_models, tmp_path):
    """--dp-size 2 with a draft model: each replica is a whole server with its own draft."""
    from tests.scheduler.draft_checkpoints import save_eagle_head

    head = save_eagle_head(tiny_models["llama"], str(tmp_path / "head"))
    with dp2_server(tiny_models["llama"], tmp_path / "dp2-eagle.log", "--speculative-algorithm",
                    "EAGLE", "--speculative-draft-model-path", head,
                    "--speculative-num-draft-tokens", "3") as url:
        body = {"input_ids": [5, 6, 7, 8, 9] * 3,
                "sampling_params": {"temperature": 0, "max_new_tokens": 6, "ignore_eos": True}}
        outs = [httpx.post(f"{url}/generate", timeout=120, json=body).json() for _ in range(2)]
        assert outs[0]["output_ids"] == outs[1]["output_ids"]  # one per replica, same answer
        assert all(o["meta_info"]["spec_verify_ct"] >= 1 for o in outs)
        assert [w["served"] for w in httpx.get(f"{url}/list_workers").json()["workers"]] == [1, 1]
