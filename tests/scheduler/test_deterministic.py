"""--enable-deterministic-inference: one request gives bitwise the same tokens and logprobs
alone, in batches of 1..64 with random batch mates (the default mode's logprobs differ
by ~1e-6 between alone and a batch of 64 here), under two prefill chunk sizes and with
its prompt cached, partly cached or not at all (tiny Llama, CPU). The batch-invariant
kernels themselves: tests/kernels/test_batch_invariant.py."""

from __future__ import annotations

import random

import pytest

import rollserve
from rollserve.scheduler.deterministic import sample_index, with_default_seed
from rollserve.core.sampling_params import SamplingParams

PROMPT = [504, 3458, 282, 4649, 314, 253, 1789, 30, 1073, 2880, 13, 604, 1745]
PARAMS = {"temperature": 1.0, "max_new_tokens": 8, "ignore_eos": True}


def run(engine, batch, rng):
    """generate() the batch; returns the result of the PROMPT request at its random slot."""
    slot = rng.randrange(len(batch) + 1)
    prompts = batch[:slot] + [PROMPT] + batch[slot:]
    params = [dict(PARAMS, max_new_tokens=rng.randint(1, 8)) for _ in prompts]
    params[slot] = PARAMS
    out = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
    result = out[slot]
    return result["output_ids"], [e[0] for e in result["meta_info"]["output_token_logprobs"]]


def mates(rng, n):
    return [[rng.randrange(100, 30000) for _ in range(rng.randint(1, 16))] for _ in range(n)]


@pytest.fixture(scope="module")
def answers(tiny_models):
    """Every answer of PROMPT, under each engine (chunk size) and batch / cache state."""
    rng = random.Random(0)
    found = {}
    for chunk in (4, 2048):
        with rollserve.Engine(tiny_models["llama"], enable_deterministic_inference=True,
                              chunked_prefill_size=chunk, max_total_tokens=8192,
                              log_level="warning") as engine:
            engine.flush_cache()
            found[(chunk, "alone, nothing cached")] = run(engine, [], rng)
            found[(chunk, "alone, all cached")] = run(engine, [], rng)
            for size in (2, 9, 64) if chunk == 4 else (5, 33):
                engine.flush_cache()
                found[(chunk, f"batch of {size}")] = run(engine, mates(rng, size - 1), rng)
            engine.flush_cache()  # a mate shares the first 6 tokens: partly cached
            engine.generate(input_ids=PROMPT[:6] + [7, 7], sampling_params=PARAMS)
            found[(chunk, "prefix cached")] = run(engine, mates(rng, 3), rng)
    return found


def test_same_tokens_and_logprobs_bitwise_in_every_batch_chunking_and_cache_state(answers):
    (first_key, first), *rest = answers.items()
    assert len(first[0]) == PARAMS["max_new_tokens"]
    for key, answer in rest:
        assert answer[0] == first[0], key
        assert answer[1] == first[1], key  # floats compared exactly


def test_default_seed_per_sample_index():
    params = SamplingParams.from_dict({"temperature": 1.0})
    assert sample_index("abc-3") == 3 and sample_index("abc") == 0 and sample_index("7") == 0
    seeds = {with_default_seed(params, f"r-{k}", 5).seed for k in range(8)}
    assert len(seeds) == 8  # the n samples of one request differ
    assert with_default_seed(params, "x-1", 5).seed == with_default_seed(params, "y-1", 5).seed
    seeded = SamplingParams.from_dict({"temperature": 1.0, "seed": 11})
    assert with_default_seed(seeded, "r-2", 5).seed == 11
