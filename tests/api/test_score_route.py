"""/v1/score (api/score_route.py) and /generate's token_ids_logprob against a float32
transformers forward of the default model; malformed requests answer 400 naming the field."""

from __future__ import annotations

import pytest
import torch


def next_logprobs(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)  # [len(ids), V]: row i predicts token i + 1


def test_scores_match_transformers(http, tokenizer, hf_model):
    query, items = "The capital of France is", [" Paris", " London", " a"]
    labels = tokenizer.encode(" the") + tokenizer.encode(" and") + tokenizer.encode(".")
    for apply_softmax, item_first in ((False, False), (True, False), (False, True)):
        got = http.post("/v1/score", json={"query": query, "items": items,
                                           "label_token_ids": labels,
                                           "apply_softmax": apply_softmax,
                                           "item_first": item_first})
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["object"] == "scoring" and len(body["scores"]) == len(items)
        for item, scores in zip(items, body["scores"]):
            text = item + query if item_first else query + item
            row = next_logprobs(hf_model, tokenizer.encode(text))[-1, labels]
            ref = torch.softmax(row, 0) if apply_softmax else row.exp()
            assert scores == pytest.approx(ref.tolist(), abs=1e-4)
    # token ids in, as ids (the pair is the concatenation, never re-tokenized)
    q, its = tokenizer.encode("1, 2, 3,"), [tokenizer.encode(" 4,"), tokenizer.encode(" 5")]
    body = http.post("/v1/score", json={"query": q, "items": its,
                                        "label_token_ids": labels}).json()
    for item, scores in zip(its, body["scores"]):
        row = next_logprobs(hf_model, q + item)[-1, labels]
        assert scores == pytest.approx(row.exp().tolist(), abs=1e-4)


def test_generate_token_ids_logprob_at_input_and_output_positions(http, tokenizer, hf_model):
    ids = tokenizer.encode("One, two, three, four")
    watch = tokenizer.encode(",") + tokenizer.encode(" five")
    out = http.post("/generate", json={
        "input_ids": ids, "sampling_params": {"temperature": 0, "max_new_tokens": 3},
        "return_logprob": True, "logprob_start_len": 0, "token_ids_logprob": watch}).json()
    meta = out["meta_info"]
    ref = next_logprobs(hf_model, ids + out["output_ids"][:-1])
    inputs = meta["input_token_ids_logprobs"]
    assert len(inputs) == len(ids) and inputs[0] is None  # the first token has no logprob
    for pos in range(1, len(ids)):
        assert [e[1] for e in inputs[pos]] == watch
        assert [e[0] for e in inputs[pos]] == pytest.approx(ref[pos - 1, watch].tolist(), abs=1e-4)
    outputs = meta["output_token_ids_logprobs"]
    assert len(outputs) == len(out["output_ids"])
    for k, entry in enumerate(outputs):
        assert [e[0] for e in entry] == pytest.approx(ref[len(ids) - 1 + k, watch].tolist(), abs=1e-4)


@pytest.mark.parametrize("body, field", [
    ({"query": "a", "items": ["b"]}, "label_token_ids"),
    ({"query": "a", "items": ["b"], "label_token_ids": []}, "label_token_ids"),
    ({"query": "a", "items": ["b"], "label_token_ids": [10 ** 9]}, "label_token_ids"),
    ({"items": ["b"], "label_token_ids": [5]}, "query"),
    ({"query": "a", "items": [], "label_token_ids": [5]}, "items"),
    ({"query": "a", "items": [[1, 2]], "label_token_ids": [5]}, "items"),
    ({"query": [1, 2], "items": ["b"], "label_token_ids": [5]}, "items"),
])
def test_bad_score_requests_name_the_field(http, body, field):
    got = http.post("/v1/score", json=body)
    assert got.status_code == 400, got.text
    assert got.json()["param"] == field


def test_bad_token_ids_logprob_names_the_field(http):
    for extra in ({"token_ids_logprob": [10 ** 9], "return_logprob": True},
                  {"token_ids_logprob": [5]},  # without return_logprob
                  {"token_ids_logprob": [[5], [6]], "return_logprob": True}):  # 2 lists, 1 prompt
        got = http.post("/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 1},
                                           **extra})
        assert got.status_code == 400, (extra, got.text)
        assert got.json()["param"] == "token_ids_logprob"
