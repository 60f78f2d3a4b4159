"""/v1/completions through the official openai client, including what
lm-evaluation-harness needs: loglikelihood (echo + prompt logprobs) and generate_until."""

import pytest

pytestmark = pytest.mark.slow


def complete(client, model_name, prompt, **kwargs):
    kwargs = {"temperature": 0, "max_tokens": 6, **kwargs}
    return client.completions.create(model=model_name, prompt=prompt, **kwargs)


def native(http, **body):
    return http.post("/generate", json=body).json()


def test_string_prompt_matches_native(client, model_name, http):
    out = complete(client, model_name, "The capital of France is")
    ref = native(http, text="The capital of France is",
                 sampling_params={"temperature": 0, "max_new_tokens": 6})
    choice = out.choices[0]
    assert choice.text == ref["text"]
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert choice.finish_reason == "length"
    assert out.usage.completion_tokens == 6
    assert out.usage.prompt_tokens == ref["meta_info"]["prompt_tokens"]


def test_prompt_forms(client, model_name, tokenizer):
    prompts = ["Roses are red,", "The sun rises in the"]
    ids = [tokenizer.encode(p) for p in prompts]
    as_strings = complete(client, model_name, prompts)
    as_ids = complete(client, model_name, ids)
    one_id_list = complete(client, model_name, ids[1])
    assert [c.index for c in as_strings.choices] == [0, 1]
    assert [c.text for c in as_ids.choices] == [c.text for c in as_strings.choices]
    assert one_id_list.choices[0].text == as_strings.choices[1].text
    assert as_strings.usage.prompt_tokens == sum(len(i) for i in ids)


def test_n_per_prompt_in_order(client, model_name):
    out = complete(client, model_name, ["Apples are", "Cars are"], n=2, temperature=0.9, seed=5)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    again = complete(client, model_name, ["Apples are", "Cars are"], n=2, temperature=0.9, seed=5)
    assert [c.text for c in again.choices] == [c.text for c in out.choices]


def test_echo(client, model_name):
    out = complete(client, model_name, "Once upon a time", max_tokens=4)
    echoed = complete(client, model_name, "Once upon a time", max_tokens=4, echo=True)
    assert echoed.choices[0].text == "Once upon a time" + out.choices[0].text


def test_loglikelihood_echo_max_tokens_zero(client, model_name, http, tokenizer):
    """lm-eval's loglikelihood: echo=True, max_tokens=0, logprobs=k over token ids."""
    ids = tokenizer.encode("The capital of France is Paris")
    out = complete(client, model_name, ids, echo=True, max_tokens=0, logprobs=1)
    choice = out.choices[0]
    lp = choice.logprobs
    assert choice.text == tokenizer.decode(ids)
    assert out.usage.completion_tokens == 0
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    ref = native(http, input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                 logprob_start_len=0)["meta_info"]["input_token_logprobs"]
    assert lp.token_logprobs[1:] == pytest.approx([r[0] for r in ref[1:]], abs=1e-5)
    assert lp.tokens == [tokenizer.decode([t]) for t in ids]
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    for token_lp, top in zip(lp.token_logprobs[1:], lp.top_logprobs[1:]):
        assert len(top) == 1 and max(top.values()) >= token_lp - 1e-6
    # "Paris" after "The capital of France is" is the greedy continuation
    last = lp.top_logprobs[-1]
    assert list(last) == [lp.tokens[-1]]


def test_loglikelihood_with_one_generated_token(client, model_name, tokenizer):
    """Older lm-eval asks for max_tokens=1 and drops the last entry itself."""
    ids = tokenizer.encode("One, two, three")
    out = complete(client, model_name, ids, echo=True, max_tokens=1, logprobs=2)
    lp = out.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1
    assert lp.token_logprobs[-1] <= 0 and all(len(t) == 2 for t in lp.top_logprobs[1:])


def test_logprobs_without_echo(client, model_name):
    out = complete(client, model_name, "1, 2, 3,", logprobs=3, max_tokens=4)
    choice = out.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == 4 and "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0
    for token, token_lp, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert max(top, key=top.get) == token and top[token] == pytest.approx(token_lp)


def test_generate_until(client, model_name):
    """lm-eval's generate_until: a batch of prompts, greedy, stop sequences."""
    prompts = ["Q: What is 2 + 3?\nA:", "Q: Name a color.\nA:"]
    free = complete(client, model_name, prompts, max_tokens=24)
    out = complete(client, model_name, prompts, max_tokens=24, stop=["\n", "Q:"])
    for f, c in zip(free.choices, out.choices):
        expected = f.text
        for s in ("\n", "Q:"):
            expected = expected.split(s)[0]
        assert c.text == expected
        assert "\n" not in c.text


def test_stream(client, model_name):
    whole = complete(client, model_name, "The weather today is", max_tokens=8, echo=True,
                     logprobs=1)
    chunks = list(complete(client, model_name, "The weather today is", max_tokens=8, echo=True,
                           logprobs=1, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    tokens = [t for c in chunks if c.choices for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks if c.choices for o in c.choices[0].logprobs.text_offset]
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_default_max_tokens_is_openai_16(client, model_name):
    out = client.completions.create(model=model_name, prompt="Lorem ipsum", temperature=0,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 16
