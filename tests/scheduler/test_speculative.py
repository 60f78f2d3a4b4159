"""Speculative decoding (NGRAM) in the scheduler gives the plain scheduler's greedy results:
same tokens, finish reasons (stop ids, stop strings, max_new_tokens) and logprobs, through
penalties, min_new_tokens, chunked prefill, the radix cache, n > 1 and retraction; the KV
of rejected drafts is freed (the pool is fully free when idle); the counters add up."""

import dataclasses
import logging
import random

import pytest
import torch

from rollserve.scheduler.ngram_drafter import NgramIndex
from rollserve.scheduler.speculative import SpeculativeScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all


def make_spec(model_path, num_draft_tokens=4, **overrides) -> SpeculativeScheduler:
    plain = make_scheduler(model_path, **overrides)
    config = dataclasses.replace(plain.config, speculative_algorithm="NGRAM",
                                 speculative_num_draft_tokens=num_draft_tokens,
                                 speculative_ngram_max_bfs_breadth=1)  # the chain; trees:
    # test_ngram_tree.py
    return SpeculativeScheduler(config, plain.runner, plain.stop_checker.tokenizer,
                                plain.eos_token_ids)


def repetitive_requests(seed, n=8):
    """Prompts that repeat a phrase (NGRAM finds drafts), greedy, with the features whose
    per-token checks must see every committed token."""
    rng = random.Random(seed)
    msgs = []
    for i in range(n):
        phrase = [rng.randrange(3, 400) for _ in range(rng.randint(3, 8))]
        prompt = [rng.randrange(3, 400) for _ in range(rng.randint(0, 5))] + phrase * rng.randint(2, 5)
        kwargs = dict(temperature=0, max_new_tokens=rng.randint(1, 40))
        kind = i % 4
        if kind == 1:
            kwargs.update(repetition_penalty=1.2, frequency_penalty=0.3, min_new_tokens=3)
        elif kind == 2:
            kwargs.update(stop_token_ids=[phrase[1]])
        elif kind == 3:
            kwargs.update(return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
        msgs.append(request(prompt, rid=f"s{seed}-{i}", **kwargs))
    same = msgs[0]  # n > 1: the samples of one request run as rid-0, rid-1, sharing the prompt
    msgs += [request(same.input_ids, rid=f"s{seed}-n-{k}", temperature=0, max_new_tokens=24)
             for k in range(2)]
    return msgs


def strip(results):
    return {rid: (r.output_ids, r.finished_reason,
                  [round(v or 0.0, 3) for v, _ in r.output_logprobs],
                  [[(round(v, 3), t) for v, t in top] for top in r.output_top])
            for rid, r in results.items()}


def assert_pool_free(scheduler):
    scheduler.flush_cache()
    assert scheduler.kv.allocator.available() == scheduler.kv.allocator.num_slots
    assert scheduler.kv.req_pool.available() == scheduler.runner.max_running_requests


@pytest.mark.parametrize("overrides", [
    {}, {"chunked_prefill_size": 16, "disable_radix_cache": True},
    {"max_total_tokens": 120}])  # the last retracts a request
def test_greedy_equals_plain_scheduler(tiny_models, overrides):
    plain = run_all(make_scheduler(tiny_models["llama"], **overrides), repetitive_requests(1),
                    arrivals={4: repetitive_requests(2)[:4]})
    spec = make_spec(tiny_models["llama"], **overrides)
    got = run_all(spec, repetitive_requests(1), arrivals={4: repetitive_requests(2)[:4]})
    assert strip(got) == strip(plain)
    stats = spec.stats.spec
    assert stats.verify_ct > 0 and stats.accept_tokens > 0  # drafts were proposed and held
    assert stats.accept_tokens < stats.draft_tokens  # ... and some were rejected
    assert_pool_free(spec)


def test_stop_strings_and_max_new_tokens_exact(tiny_models):
    plain = make_scheduler(tiny_models["llama"])
    tokenizer = plain.stop_checker.tokenizer
    prompt = [17, 45, 99, 120, 17, 45, 99, 120, 17, 45]
    ref = run_all(plain, [request(prompt, rid="ref", temperature=0, max_new_tokens=30)])["ref"]
    text = tokenizer.decode(ref.output_ids)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    msgs = lambda: ([request(prompt, rid="stop", temperature=0, max_new_tokens=30, stop=[stop])] +
                    [request(prompt, rid=f"len{n}", temperature=0, max_new_tokens=n, ignore_eos=True)
                     for n in (1, 2, 3, 5, 8)])
    want = run_all(make_scheduler(tiny_models["llama"]), msgs())
    spec = make_spec(tiny_models["llama"], num_draft_tokens=6)
    got = run_all(spec, msgs())
    assert got["stop"].finished_reason["type"] == "stop"
    assert strip(got) == strip(want)
    for n in (1, 2, 3, 5, 8):
        assert len(got[f"len{n}"].output_ids) == n
        assert got[f"len{n}"].finished_reason == {"type": "length", "length": n}
    assert_pool_free(spec)


def test_sampled_requests_run_and_free_their_kv(tiny_models):
    spec = make_spec(tiny_models["qwen3"])
    msgs = [request([5, 6, 7, 8] * 6, rid=f"t{i}", temperature=1.0, top_p=0.9, top_k=20,
                    max_new_tokens=20, seed=i if i % 2 else None) for i in range(4)]
    got = run_all(spec, msgs)
    assert all(len(r.output_ids) >= 1 and r.finished_reason for r in got.values())
    assert_pool_free(spec)


def test_counters_log_line_and_meta(tiny_models, caplog):
    spec = make_spec(tiny_models["llama"], decode_log_interval=2)
    msg = request([9, 10, 11, 12] * 5, rid="m", temperature=0, max_new_tokens=12, ignore_eos=True)
    spec.add_request(msg)
    outs = []
    with caplog.at_level(logging.INFO, logger="rollserve.scheduler.scheduler"):
        while spec.has_work():
            outs.extend(spec.step())
    final = outs[-1]
    assert final.spec_verify_ct > 0
    assert final.spec_accept_tokens <= final.spec_draft_tokens
    assert final.completion_tokens == 12
    snap = spec.info()
    assert snap["spec_verify_ct_total"] == final.spec_verify_ct
    assert snap["generation_tokens_total"] == 12  # every committed token counted once
    assert any("accept len: " in r.getMessage() and "accept rate: " in r.getMessage()
               for r in caplog.records)


def test_ngram_index_proposes_what_followed_the_longest_match():
    index = NgramIndex(max_window=4)
    tokens = [1, 2, 3, 9, 1, 2, 3, 4, 5, 7, 2, 3]
    index.extend(tokens)
    assert index.propose(tokens, 3) == [4, 5, 7]  # "2 3" last followed by 4 (latest match)
    tokens = tokens + [9]
    index.extend(tokens)
    assert index.propose(tokens, 2) == [1, 2]  # "3 9" -> 1 2
    assert index.propose([8, 8, 6], 2) == []  # "6" never seen
    longest = [5, 1, 2, 3, 8, 9, 9, 2, 3, 7, 5, 1, 2, 3]  # "5 1 2 3" beats the later "9 2 3"
    index.extend(longest)  # (a rewritten sequence: the index starts over)
    assert index.propose(longest, 2) == [8, 9]
    index.extend([1, 2])  # a rewritten sequence starts over
    assert index.length == 2 and index.propose([1, 2], 2) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "torch_native"])
def test_cuda_greedy_equals_overlap_scheduler_with_graphs(tiny_models, backend):
    """On CUDA the plain run is the server's: overlap scheduling and decode CUDA graphs; the
    speculative one, overlapped too, verifies eagerly (Triton extend kernel) and replays
    graphs when no request has a draft. float32 and sharpened logits: no argmax is a rounding tie."""
    from rollserve.core.tokenizer import eos_token_ids, load_tokenizer
    from rollserve.executor.model_runner import ModelRunner
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.scheduler.overlap_scheduler import make_scheduler as make_for_config

    path = tiny_models["llama"]
    results = []
    for algorithm in (None, "NGRAM"):
        args = ServerArgs(model_path=path, device="cuda", dtype="float32", max_total_tokens=4096,
                          attention_backend=backend, speculative_algorithm=algorithm)
        config = args.scheduler_config()
        tokenizer = load_tokenizer(path)
        scheduler = make_for_config(config, ModelRunner(config.executor), tokenizer,
                                    eos_token_ids(path, tokenizer))
        results.append(run_all(scheduler, repetitive_requests(1)))
        if algorithm:
            assert scheduler.stats.spec.accept_tokens > 0
            assert scheduler.overlapped_steps > 0  # overlapped (scheduler/overlap_speculative.py)
            assert_pool_free(scheduler)
    assert strip(results[1]) == strip(results[0])
