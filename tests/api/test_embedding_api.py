"""Real servers for embeddings and rewards: `rollserve serve --is-embedding` (the embedded
all-MiniLM-L6-v2) and a tiny random LlamaForSequenceClassification; /encode, /classify,
OpenAI's /v1/embeddings (float and base64), 64 concurrent /classify calls, and the
error cases (empty, over-long, the wrong kind of model)."""

import base64
import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F

from tests.api.conftest import start_server, stop_server
from tests.api.test_errors import assert_error
from tests.executor.test_pooling_model import save_tiny_pooling_checkpoint

pytestmark = pytest.mark.slow
ATOL = 1e-5
PAD = 2


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("minilm-logs"), "minilm", ["--is-embedding"])
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def emb(embedding_server):
    with httpx.Client(base_url=embedding_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def minilm(emb):
    """(tokenizer, transformers BertModel) of the model the server runs."""
    from transformers import AutoModel, AutoTokenizer

    path = emb.get("/get_model_info").json()["model_path"]
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, default_model_dir):
    folder = os.path.join(tmp_path_factory.mktemp("reward"), "llama_rm")
    return save_tiny_pooling_checkpoint("classification", "llama", folder, default_model_dir,
                                        seed=7, num_labels=1, pad_token_id=PAD)


@pytest.fixture(scope="module")
def reward(tmp_path_factory, reward_model):
    server = start_server(tmp_path_factory.mktemp("reward-logs"), "reward",
                          ["--model-path", reward_model[0]])
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client
    stop_server(server)


def mean_pooled(minilm, texts):
    """sentence-transformers' Pooling(mean) + Normalize over transformers' BertModel."""
    tokenizer, model = minilm
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), p=2, dim=1)


def reward_scores(reward_model, ids):
    with torch.no_grad():
        return reward_model[1](torch.tensor([ids])).logits[0]


def close(got, expected):
    torch.testing.assert_close(torch.tensor(got), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------- embeddings
def test_chat_and_completions_on_an_embedding_server_say_what_it_serves(emb):
    name = emb.get("/v1/models").json()["data"][0]["id"]
    for path, body in (("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        response = emb.post(path, json={"model": name, **body})
        assert_error(response, 400, "model", "is for embedding")
        assert "/v1/embeddings" in response.json()["message"]


def test_model_info_says_not_generation(emb, reward):
    for client in (emb, reward):
        assert client.get("/get_model_info").json()["is_generation"] is False
        assert client.get("/health_generate").status_code == 200
    assert emb.get("/get_server_info").json()["disable_radix_cache"] is True  # bidirectional


def test_encode_matches_transformers(emb, minilm):
    texts = ["A man is eating food.", "Two short words", "hello " * 100]
    reference = mean_pooled(minilm, texts)
    single = emb.post("/encode", json={"text": texts[0]}).json()
    close(single["embedding"], reference[0])
    assert single["meta_info"]["prompt_tokens"] == len(minilm[0].encode(texts[0]))
    batch = emb.post("/encode", json={"text": texts}).json()
    assert [len(r["embedding"]) for r in batch] == [384] * 3
    for result, expected in zip(batch, reference):
        close(result["embedding"], expected)
    ids = minilm[0].encode(texts[1])
    by_ids = emb.post("/encode", json={"input_ids": [ids]}).json()
    close(by_ids[0]["embedding"], reference[1])


def test_openai_embeddings_float_and_base64(embedding_server, emb, minilm):
    client = openai.OpenAI(base_url=embedding_server.url + "/v1", api_key="unused", max_retries=0)
    texts = ["The cat sits outside", "A man is playing guitar"]
    reference = mean_pooled(minilm, texts)
    as_float = client.embeddings.create(input=texts, model="default", encoding_format="float")
    as_default = client.embeddings.create(input=texts, model="default")  # the client asks for base64
    for response in (as_float, as_default):
        assert [d.index for d in response.data] == [0, 1]
        for data, expected in zip(response.data, reference):
            close(data.embedding, expected)
    prompt_tokens = sum(len(minilm[0].encode(t)) for t in texts)
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == prompt_tokens
    raw = emb.post("/v1/embeddings", json={"input": texts[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    close(decoded.tolist(), reference[0])
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"


def test_encode_errors(emb):
    assert_error(emb.post("/encode", json={"text": ""}), 400, "text", "empty")
    assert_error(emb.post("/encode", json={"text": []}), 400, "text", "batch is empty")
    assert_error(emb.post("/encode", json={"input_ids": []}), 400, "input_ids", "empty")
    assert_error(emb.post("/encode", json={"input_ids": [1, 10 ** 9]}), 400, "input_ids")
    assert_error(emb.post("/encode", json={}), 400, "text", "exactly one")
    assert_error(emb.post("/encode", json={"text": "word " * 600}), 400, "text",
                 "over the maximum input length 512")
    assert_error(emb.post("/v1/embeddings", json={"input": ["ok", ""]}), 400, "input", "empty")
    assert_error(emb.post("/v1/embeddings", json={"input": "a", "dimensions": 8}), 400,
                 "dimensions")
    assert_error(emb.post("/v1/embeddings", json={"input": "a", "encoding_format": "int8"}), 422,
                 "encoding_format")
    assert_error(emb.post("/v1/embeddings", json={"input": "a", "model": "nope"}), 404, "model")
    # an embedding model asked to generate or to classify
    assert_error(emb.post("/generate", json={"text": "hi"}), 400, "model", "is for embedding")
    assert_error(emb.post("/v1/completions", json={"model": "default", "prompt": "hi"}), 400,
                 None, "is for embedding")
    assert_error(emb.post("/classify", json={"text": "hi"}), 400, "model", "use /encode")
    assert emb.get("/health").status_code == 200


# ---------------------------------------------------------------- rewards
def test_64_concurrent_classify_calls(reward, reward_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward_model[0])
    texts = [f"Answer {i}: " + "the result is " * (i % 9) + str(i * 37) for i in range(64)]

    def classify(text):
        response = reward.post("/classify", json={"text": text})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(classify, texts))
    for text, result in zip(texts, results):
        expected = reward_scores(reward_model, tokenizer.encode(text))
        close(result["scores"], expected)
        assert result["embedding"] == result["scores"] and len(result["scores"]) == 1
        assert result["meta_info"]["prompt_tokens"] > 0


def test_classify_conversations_and_trailing_pads(reward, reward_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(reward_model[0])
    conversations = [[{"role": "user", "content": "What is 2 + 2?"},
                      {"role": "assistant", "content": answer}] for answer in ("4", "5", "fish")]
    rendered = [tokenizer.encode(tokenizer.apply_chat_template(c, tokenize=False),
                                 add_special_tokens=False) for c in conversations]
    one = reward.post("/classify", json={"messages": conversations[0]}).json()
    close(one["scores"], reward_scores(reward_model, rendered[0]))
    batch = reward.post("/classify", json={"messages": conversations}).json()
    for result, ids in zip(batch, rendered):
        close(result["scores"], reward_scores(reward_model, ids))
    # transformers scores the last non-pad token: trailing pads change nothing
    ids = rendered[1] + [PAD, PAD]
    padded = reward.post("/classify", json={"input_ids": ids}).json()
    close(padded["scores"], reward_scores(reward_model, ids))
    assert padded["meta_info"]["prompt_tokens"] == len(rendered[1])


def test_classify_errors(reward):
    assert_error(reward.post("/classify", json={"messages": []}), 400, "messages", "conversation")
    assert_error(reward.post("/classify", json={"messages": [{"role": "user"}]}), 400,
                 "messages", "content")
    assert_error(reward.post("/classify", json={"text": "a", "messages": [[]]}), 400, "messages",
                 "exactly one")
    assert_error(reward.post("/encode", json={"text": "hi"}), 400, "model", "use /classify")
    assert_error(reward.post("/generate", json={"text": "hi"}), 400, "model",
                 "is for classification")


# ---------------------------------------------------------------- a generation model
def test_generation_model_refuses_encode_and_classify(http):
    for path, body in (("/encode", {"text": "hi"}), ("/classify", {"text": "hi"}),
                       ("/v1/embeddings", {"input": "hi"})):
        assert_error(http.post(path, json=body), 400, "model", "is for generation")
    assert http.get("/get_model_info").json()["is_generation"] is True
