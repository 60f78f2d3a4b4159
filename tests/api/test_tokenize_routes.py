"""/tokenize, /detokenize and /tokenizer_info, driven by lm-eval's own RemoteTokenizer
(what `local-completions` uses when tokenizer_backend is left to the server)."""

from __future__ import annotations


def test_lm_eval_detects_and_uses_the_server_tokenizer(server, tokenizer):
    from lm_eval.utils import RemoteTokenizer, check_remote_tokenizer_support

    base_url = server.url + "/v1/completions"
    assert check_remote_tokenizer_support(base_url) is True
    remote = RemoteTokenizer(base_url)
    text = "Paris is the capital of France."
    ids = remote.encode(text)
    assert ids == tokenizer.encode(text, add_special_tokens=False)
    assert remote.decode(ids) == text
    assert remote.eos_token == tokenizer.eos_token and remote.eos_token_id == tokenizer.eos_token_id
    chat = remote.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert chat == tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                 tokenize=False, add_generation_prompt=True)


def test_sglang_shapes(http, tokenizer):
    batch = http.post("/tokenize", json={"prompt": ["a b", "c"], "add_special_tokens": False}).json()
    assert batch["tokens"] == [tokenizer.encode("a b"), tokenizer.encode("c")]
    assert batch["count"] == [len(t) for t in batch["tokens"]] and batch["max_model_len"] > 0
    text = http.post("/detokenize", json={"tokens": [batch["tokens"][0]]}).json()
    assert text["text"] == ["a b"]
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert tokenizer.decode(chat["tokens"]).endswith("assistant\n")


def test_bad_tokenizer_requests_name_the_field(http):
    response = http.post("/detokenize", json={"tokens": [10 ** 9]})
    assert response.status_code == 400 and response.json()["param"] == "tokens"
    response = http.post("/tokenize", json={})
    assert response.status_code == 400 and response.json()["param"] == "prompt"
