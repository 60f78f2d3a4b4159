"""TRL's /get_sequence_logprobs/ (api/sequence_logprobs.py) against a float32 transformers
forward of the default model, in both of TRL's response formats; bad input -> 400 naming
the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch


def reference(model, seq):
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)  # row p scores token p + 1


def test_json_and_binary_match_transformers(http, tokenizer, hf_model):
    seqs = [tokenizer.encode("The capital of France is Paris, and"),
            tokenizer.encode("1, 2, 3, 4")]
    plens, k = [4, 0], 3
    default = http.post("/get_sequence_logprobs/", json={"sequences": seqs[:1],
                                                         "prompt_lengths": [len(seqs[0]) - 1]})
    assert len(default.json()["logprobs"][0][0]) >= 100  # TRL's default top_logprobs
    got = http.post("/get_sequence_logprobs/", json={"sequences": seqs, "prompt_lengths": plens,
                                                     "top_logprobs": k}).json()
    binary = http.post("/get_sequence_logprobs", json={
        "sequences": seqs, "prompt_lengths": plens, "top_logprobs": k,
        "response_format": "binary"}).json()
    shape = binary["shape"]
    assert shape == [2, max(len(s) - p for s, p in zip(seqs, plens)), k]
    assert binary["completion_lengths"] == [len(s) - p for s, p in zip(seqs, plens)]
    lp = np.frombuffer(base64.b64decode(binary["logprobs_b64"]), np.float32).reshape(shape)
    ids = np.frombuffer(base64.b64decode(binary["token_ids_b64"]), np.int32).reshape(shape)
    own = np.frombuffer(base64.b64decode(binary["actual_logprobs_b64"]),
                        np.float32).reshape(shape[:2] + [1])
    for i, (seq, pl) in enumerate(zip(seqs, plens)):
        ref = reference(hf_model, seq)
        assert len(got["logprobs"][i]) == len(seq) - pl
        for t, pos in enumerate(range(pl, len(seq))):
            if pos == 0:  # nothing scores the first token
                assert got["logprobs"][i][t] == [] and own[i, t, 0] == -np.inf
                continue
            values, top = ref[pos - 1].topk(k)
            assert got["logprob_token_ids"][i][t][:k] == top.tolist()
            assert got["logprobs"][i][t][:k] == pytest.approx(values.tolist(), abs=1e-4)
            if seq[pos] not in top.tolist():  # vLLM adds the sequence's own token
                assert got["logprob_token_ids"][i][t][k] == seq[pos]
            assert ids[i, t].tolist() == top.tolist()
            assert lp[i, t].tolist() == pytest.approx(values.tolist(), abs=1e-4)
            assert own[i, t, 0] == pytest.approx(ref[pos - 1, seq[pos]].item(), abs=1e-4)


@pytest.mark.parametrize("body, field", [
    ({"sequences": [[1, 2]], "prompt_lengths": [1, 1]}, "prompt_lengths"),
    ({"sequences": [[1, 2]], "prompt_lengths": [3]}, "prompt_lengths"),
    ({"sequences": [[1, 10 ** 9]], "prompt_lengths": [1]}, "sequences"),
    ({"sequences": [[1, 2]], "prompt_lengths": [1], "top_logprobs": 0}, "top_logprobs"),
    ({"sequences": [[1, 2]], "prompt_lengths": [1], "temperature": 0.7}, "temperature"),
    ({"sequences": [[1, 2]], "prompt_lengths": [1], "response_format": "xml"}, "response_format"),
])
def test_bad_requests_name_the_field(http, body, field):
    got = http.post("/get_sequence_logprobs/", json=body)
    assert got.status_code == 400, got.text
    assert got.json()["param"] == field


def test_trl_vllm_client_get_sequence_logprobs(server, tokenizer, hf_model):
    """TRL 1.x's client asks /v1/completions for prompt_logprobs (the route above is the
    older `trl vllm-serve` one)."""
    pytest.importorskip("trl")
    import trl.generation.vllm_client as vc

    with pytest.MonkeyPatch.context() as patch:  # it checks for vLLM, which it does not use here
        patch.setattr(vc, "is_vllm_available", lambda *a, **k: True)
        client = vc.VLLMClient(base_url=server.url, connection_timeout=30)
    seqs = [tokenizer.encode("Knowledge distillation needs a teacher"), tokenizer.encode("a b c")]
    plens, k = [3, 1], 4
    got = client.get_sequence_logprobs(seqs, plens, top_logprobs=k)
    for i, (seq, pl) in enumerate(zip(seqs, plens)):
        ref = reference(hf_model, seq)
        assert len(got["logprobs"][i]) == len(seq) - pl
        for t, pos in enumerate(range(pl, len(seq))):
            values, top = ref[pos - 1].topk(k)
            assert got["logprob_token_ids"][i][t] == top.tolist()
            assert got["logprobs"][i][t] == pytest.approx(values.tolist(), abs=1e-4)
            assert got["actual_token_ids"][i][t] == [seq[pos]]
            assert got["actual_logprobs"][i][t][0] == pytest.approx(ref[pos - 1, seq[pos]].item(),
                                                                    abs=1e-4)


def test_completions_prompt_logprobs_match_transformers(http, tokenizer, hf_model, model_name):
    seq = tokenizer.encode("The three primary colors are red")
    body = http.post("/v1/completions", json={"model": model_name, "prompt": seq,
                                              "max_tokens": 1, "temperature": 0,
                                              "prompt_logprobs": 2, "logprobs": 1}).json()
    assert "choices" in body, body
    choice = body["choices"][0]
    lps = choice["prompt_logprobs"]
    ref = reference(hf_model, seq)
    assert len(lps) == len(seq) and lps[0] is None
    for pos in range(1, len(seq)):
        values, top = ref[pos - 1].topk(2)
        ranked = sorted(lps[pos].items(), key=lambda item: item[1]["rank"])
        assert [int(t) for t, _ in ranked[:2]] == top.tolist()
        assert [e["logprob"] for _, e in ranked[:2]] == pytest.approx(values.tolist(), abs=1e-4)
        assert lps[pos][str(seq[pos])]["logprob"] == pytest.approx(ref[pos - 1, seq[pos]].item(),
                                                                    abs=1e-4)
    assert all(len(t) == 1 for t in choice["logprobs"]["top_logprobs"])  # logprobs keeps its own 1
    for bad in ({"prompt_logprobs": -1}, {"prompt_logprobs": 2, "stream": True}):
        got = http.post("/v1/completions", json={"model": model_name, "prompt": "hi",
                                                 "max_tokens": 1, **bad})
        assert got.status_code == 400 and got.json()["param"] == "prompt_logprobs"
    got = http.post("/v1/chat/completions", json={
        "model": model_name, "messages": [{"role": "user", "content": "hi"}],
        "prompt_logprobs": 1})
    assert got.status_code == 400 and got.json()["param"] == "prompt_logprobs"
