"""/v1/chat/completions and /v1/models through the official openai client."""

import concurrent.futures

import pytest

pytestmark = pytest.mark.slow


def ask(client, model_name, content, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 8, **kwargs}
    return client.chat.completions.create(model=model_name,
                                          messages=[{"role": "user", "content": content}], **kwargs)


def test_models(client, model_name, http):
    models = client.models.list().data
    assert [m.id for m in models] == [model_name]
    assert model_name == http.get("/get_model_info").json()["model_path"]


def test_capital_of_france(client, model_name):
    out = ask(client, model_name, "What is the capital of France?", max_tokens=32)
    choice = out.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    usage = out.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens >= 0


def test_multi_turn_uses_chat_template(client, model_name, tokenizer):
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "What color is the sky?"},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "And grass?"}]
    out = client.chat.completions.create(model=model_name, messages=messages, temperature=0,
                                         max_tokens=8)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert out.usage.prompt_tokens == len(tokenizer.encode(prompt, add_special_tokens=False))
    assert out.choices[0].message.content.strip()
    # the same conversation through the native endpoint gives the same greedy answer
    assert out.choices[0].message.content == _native_text(client, prompt, tokenizer)


def _native_text(client, prompt, tokenizer):
    import httpx

    base = str(client.base_url).removesuffix("/v1/")
    out = httpx.post(base + "/generate", json={
        "input_ids": tokenizer.encode(prompt, add_special_tokens=False),
        "sampling_params": {"temperature": 0, "max_new_tokens": 8}}, timeout=60).json()
    return out["text"]


def test_max_completion_tokens_and_length(client, model_name):
    out = ask(client, model_name, "Count from 1 to 100.", max_tokens=None, max_completion_tokens=5)
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"


def test_n_two_choices(client, model_name):
    out = ask(client, model_name, "Tell me a fun fact.", n=2, temperature=1.0, seed=7, max_tokens=10)
    assert [c.index for c in out.choices] == [0, 1]
    assert all(c.message.content for c in out.choices)
    assert out.choices[0].message.content != out.choices[1].message.content
    one = ask(client, model_name, "Tell me a fun fact.", max_tokens=1)
    assert out.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert 2 <= out.usage.completion_tokens <= 20


def test_seed_reproducible(client, model_name):
    kwargs = {"temperature": 1.0, "top_p": 0.95, "max_tokens": 12}
    first = ask(client, model_name, "Invent a name for a cat.", seed=1234, **kwargs)
    again = ask(client, model_name, "Invent a name for a cat.", seed=1234, **kwargs)
    other = [ask(client, model_name, "Invent a name for a cat.", seed=s, **kwargs)
             for s in (1, 2, 3)]
    assert first.choices[0].message.content == again.choices[0].message.content
    assert any(o.choices[0].message.content != first.choices[0].message.content for o in other)


def test_stop_string(client, model_name):
    full = ask(client, model_name, "List three fruits, one per line.", max_tokens=24)
    text = full.choices[0].message.content
    stop = text.strip()[3:6]  # a piece from the middle of the greedy answer
    cut = ask(client, model_name, "List three fruits, one per line.", max_tokens=24, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_penalties_accepted(client, model_name):
    out = ask(client, model_name, "Say hello.", presence_penalty=0.5, frequency_penalty=0.5,
              user="tester")
    assert out.choices[0].message.content


def test_logprobs(client, model_name):
    out = ask(client, model_name, "What is 2 + 2?", logprobs=True, top_logprobs=3, max_tokens=5)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(t.token for t in content) == out.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.bytes == list(t.token.encode())


def test_stream_with_usage(client, model_name):
    whole = ask(client, model_name, "Name a planet.", max_tokens=10)
    chunks = list(ask(client, model_name, "Name a planet.", max_tokens=10, stream=True,
                      stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason and not any(finishes[:-1])
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_n_two(client, model_name):
    chunks = list(ask(client, model_name, "Say something.", n=2, temperature=0.8, seed=3,
                      max_tokens=6, stream=True))
    texts = {0: "", 1: ""}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    whole = ask(client, model_name, "Say something.", n=2, temperature=0.8, seed=3, max_tokens=6)
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]


def test_32_concurrent_equal_single(client, model_name):
    questions = [f"What is {a} plus {a + 1}?" for a in range(32)]
    single = [ask(client, model_name, q, max_tokens=6).choices[0].message.content
              for q in questions]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(
            lambda q: ask(client, model_name, q, max_tokens=6).choices[0].message.content,
            questions))
    assert together == single
