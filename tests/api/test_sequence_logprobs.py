"""TRL's /get_sequence_logprobs/ (api/sequence_logprobs.py) against a float32 transformers
forward of the default model, in both of TRL's response formats; bad input -> 400 naming
the field."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def hf_model(http):
    from transformers import AutoModelForCausalLM

    path = http.get("/get_model_info").json()["model_path"]
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


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
