"""rollserve.Engine end to end: real scheduler and detokenizer processes over ZeroMQ."""

import asyncio
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM

import rollserve
from rollserve.core.sampling_params import InvalidRequest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():
    with rollserve.Engine(max_total_tokens=16384) as eng:
        yield eng


@pytest.fixture(scope="module")
def hf_smollm(default_model_dir):
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def chat(engine, text):
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                tokenize=False, add_generation_prompt=True)


def test_capital_of_france(engine):
    out = engine.generate(chat(engine, "What is the capital of France?"),
                          {"temperature": 0, "max_new_tokens": 32})
    assert "Paris" in out["text"]
    meta = out["meta_info"]
    assert meta["finish_reason"]["type"] in ("stop", "length")
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] == len(out["output_ids"])
    assert set(meta) >= {"id", "cached_tokens", "e2e_latency", "weight_version"}


def test_greedy_parity_with_transformers_batch(engine, hf_smollm):
    prompts = ["The three primary colors are", "def fibonacci(n):",
               "Once upon a time, in a land far away,", "The chemical symbol for gold is",
               "To be or not to be,", "1, 2, 3, 4,", "The largest ocean on Earth is the",
               "import numpy as np\n"]
    outs = engine.generate(prompts, {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True})
    tok = engine.tokenizer
    for prompt, out in zip(prompts, outs):
        ids = tok.encode(prompt)
        with torch.no_grad():
            ref = hf_smollm.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                     min_new_tokens=16, pad_token_id=0)
        assert out["output_ids"] == ref[0, len(ids):].tolist(), prompt


def test_stream_matches_non_stream(engine):
    params = {"temperature": 0, "max_new_tokens": 20}
    prompt = chat(engine, "Name three fruits.")
    full = engine.generate(prompt, params)
    chunks = list(engine.generate(prompt, params, stream=True))
    assert len(chunks) > 1
    assert chunks[-1]["text"] == full["text"]
    assert all(b["text"].startswith(a["text"]) for a, b in zip(chunks, chunks[1:]))


def test_stop_string_is_matched_and_trimmed(engine):
    prompt = "1, 2, 3, 4, 5, 6,"
    base = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 12})["text"]
    stop = base.strip().split(",")[1].strip()  # a number that appears mid-way
    out = engine.generate(prompt, {"temperature": 0, "max_new_tokens": 12, "stop": stop})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in out["text"] and base.startswith(out["text"])


def test_n_samples_share_the_prompt(engine):
    prompt = chat(engine, "Write a short poem about the sea, " * 4)
    outs = engine.generate(prompt, {"temperature": 1.0, "max_new_tokens": 8, "n": 3, "seed": 7})
    assert len(outs) == 3
    assert all(o["meta_info"]["cached_tokens"] >= o["meta_info"]["prompt_tokens"] - 1 for o in outs)
    again = engine.generate(prompt, {"temperature": 1.0, "max_new_tokens": 8, "n": 3, "seed": 7})
    assert [o["output_ids"] for o in outs] == [o["output_ids"] for o in again]


def test_logprobs_in_sglang_format(engine):
    out = engine.generate("Hello, my name is", {"temperature": 0, "max_new_tokens": 4},
                          return_logprob=True, logprob_start_len=0, top_logprobs_num=2,
                          return_text_in_logprobs=True)
    meta = out["meta_info"]
    first = meta["input_token_logprobs"][0]
    assert first[0] is None and isinstance(first[1], int)
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert [e[1] for e in meta["output_token_logprobs"]] == out["output_ids"]
    lp, tok, text = meta["output_token_logprobs"][0]
    assert lp <= 0 and isinstance(text, str)
    assert meta["output_top_logprobs"][0][0][1] == tok  # greedy: the top token was chosen


def test_async_generate_and_stream(engine):
    async def run():
        one = await engine.async_generate("The sky is", {"temperature": 0, "max_new_tokens": 5})
        chunks = [c async for c in await engine.async_generate(
            "The sky is", {"temperature": 0, "max_new_tokens": 5}, stream=True)]
        return one, chunks

    one, chunks = asyncio.run(run())
    assert chunks[-1]["output_ids"] == one["output_ids"]


def test_abort_running_request(engine):
    stream = engine.generate("Count forever: 1, 2, 3,", {"max_new_tokens": 2000, "ignore_eos": True},
                             rid="abort-me", stream=True)
    first = next(stream)
    threading.Timer(0.2, engine.abort, args=("abort-me",)).start()
    last = first
    for last in stream:
        pass
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["completion_tokens"] < 2000


def test_invalid_requests_name_the_field(engine):
    cases = [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 0}, "top_k"),
             ({"max_new_tokens": -2}, "max_new_tokens"), ({"n": 0}, "n"), ({"min_p": 2}, "min_p"),
             ({"stop": 5}, "stop"), ({"bogus": 1}, "bogus"), ({"logit_bias": {"x": 1}}, "logit_bias"),
             ({"logit_bias": {"99999999": 1}}, "logit_bias")]
    for params, name in cases:
        with pytest.raises(InvalidRequest, match=name):
            engine.generate("hi", params)
    with pytest.raises(InvalidRequest, match="input_ids"):
        engine.generate(input_ids=[1, 2, 10**9])
    with pytest.raises(InvalidRequest, match="text"):
        engine.generate("")
    too_long = " hello" * 9000
    with pytest.raises(InvalidRequest, match="context length"):
        engine.generate(too_long, {"max_new_tokens": 1})
    # the engine still serves after every rejection
    assert engine.generate("ok", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_flush_cache_and_server_info(engine):
    info = engine.get_server_info()
    assert info["model_path"] and info["max_total_num_tokens"] == 16384
    assert {"schedule_policy", "chunked_prefill_size", "version", "max_req_input_len"} <= set(info)
    assert engine.flush_cache()["success"] is True


def test_auto_truncate(tiny_models):
    with rollserve.Engine(model_path=tiny_models["llama"], context_length=32,
                          allow_auto_truncate=True, max_total_tokens=512) as eng:
        out = eng.generate(input_ids=list(range(5, 100)),
                           sampling_params={"max_new_tokens": 3, "ignore_eos": True})
    # the prompt keeps its start and leaves room for the 3 new tokens (context 32)
    assert out["meta_info"]["prompt_tokens"] == 29
    assert out["meta_info"]["completion_tokens"] == 3
