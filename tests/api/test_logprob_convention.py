"""SGLang's logprob convention through the HTTP server (#27), checked against transformers
on the same tokens: sampled requests return log_softmax(logits / T) by default, the logits
before temperature with SGLANG_RETURN_ORIGINAL_LOGPROB=1 in the server's environment, and
`sampling_params.logprob_mode` picks "scaled", "raw" or "sampling" (the filtered
distribution the token was drawn from) per request. At T=0.7 the conventions differ by
nats, so a tolerance of 1e-3 tells them apart."""

from __future__ import annotations

import httpx
import pytest
import torch

from tests.api.conftest import start_server, stop_server

PROMPT = "The capital of France is"
T = 0.7
TOP_K = 5


@pytest.fixture(scope="module")
def hf(http):
    from transformers import AutoModelForCausalLM

    path = http.get("/get_model_info").json()["model_path"]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def sampled(http, ids, **params) -> tuple:
    """(output ids, their logprobs) of a sampled request as a trainer sends it."""
    sampling = {"temperature": T, "max_new_tokens": 6, "seed": 3, **params}
    meta = http.post("/generate", json={"input_ids": ids, "sampling_params": sampling,
                                        "return_logprob": True}).json()
    return [t for _, t, _ in meta["meta_info"]["output_token_logprobs"]], \
        [lp for lp, _, _ in meta["meta_info"]["output_token_logprobs"]]


def reference(hf, ids, out, mode) -> list:
    """transformers' logprob of each output token under `mode`."""
    with torch.no_grad():
        logits = hf(torch.tensor([ids + out])).logits[0, len(ids) - 1:-1].float()
    if mode == "raw":
        logprobs = torch.log_softmax(logits, dim=-1)
    elif mode == "scaled":
        logprobs = torch.log_softmax(logits / T, dim=-1)
    else:  # sampling with top_k: the renormalized top-k of logits / T
        scaled = logits / T
        kth = scaled.topk(TOP_K, dim=-1).values[:, -1:]
        logprobs = torch.log_softmax(scaled.masked_fill(scaled < kth, float("-inf")), dim=-1)
    return logprobs.gather(1, torch.tensor(out).view(-1, 1)).view(-1).tolist()


@pytest.mark.parametrize("mode", [None, "scaled", "raw", "sampling"])
def test_logprobs_follow_sglang_and_the_requested_mode(http, tokenizer, hf, mode):
    ids = tokenizer.encode(PROMPT)
    params = {} if mode is None else {"logprob_mode": mode}
    if mode == "sampling":
        params["top_k"] = TOP_K
    out, got = sampled(http, ids, **params)
    assert got == pytest.approx(reference(hf, ids, out, mode or "scaled"), abs=1e-3)


@pytest.mark.multiprocess  # a second server beside the session's (about a minute on 2 cores)
def test_environment_switch_returns_the_logits_before_temperature(tmp_path, monkeypatch,
                                                                  tokenizer, hf):
    monkeypatch.setenv("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
    server = start_server(tmp_path, "original-logprob")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as http:
            ids = tokenizer.encode(PROMPT)
            out, got = sampled(http, ids)
            assert got == pytest.approx(reference(hf, ids, out, "raw"), abs=1e-3)
            out, got = sampled(http, ids, logprob_mode="scaled")  # a request still picks
            assert got == pytest.approx(reference(hf, ids, out, "scaled"), abs=1e-3)
    finally:
        stop_server(server)
