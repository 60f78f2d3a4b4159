"""The overlap scheduler (step i+1 built and launched before step i is processed) gives
the plain scheduler's results: same tokens, finish reasons and logprobs, through stops,
seeds, penalties, chunked prefill, late arrivals, retraction and aborts. On CPU the
two steps do not run concurrently, but every bookkeeping path is the same."""

import random

import pytest

from rollserve.scheduler.overlap_scheduler import OverlapScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all


def make_overlap(model_path, **overrides) -> OverlapScheduler:
    plain = make_scheduler(model_path, **overrides)
    return OverlapScheduler(plain.config, plain.runner, plain.stop_checker.tokenizer, plain.eos_token_ids)


def prompts(n, seed, lo=3, hi=40, prefix=6):
    rng = random.Random(seed)
    shared = [rng.randrange(3, 500) for _ in range(prefix)]
    return [shared + [rng.randrange(3, 500) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def mixed_requests(seed):
    """Greedy and sampled rows, stop tokens, seeds, penalties, min_new_tokens, logprobs."""
    rng = random.Random(seed)
    msgs = []
    for i, p in enumerate(prompts(10, seed)):
        kind = i % 5
        kwargs = dict(max_new_tokens=rng.randint(1, 14))
        if kind == 0:
            kwargs.update(temperature=0)
        elif kind == 1:
            kwargs.update(temperature=0.8, seed=100 + i, top_p=0.9)
        elif kind == 2:
            kwargs.update(temperature=0, repetition_penalty=1.3, frequency_penalty=0.5)
        elif kind == 3:
            kwargs.update(temperature=0, stop_token_ids=list(range(3, 300)), min_new_tokens=2)
        else:
            kwargs.update(temperature=0, return_logprob=True, top_logprobs_num=2, logprob_start_len=0)
        msgs.append(request(p, rid=f"s{seed}-{i}", **kwargs))
    return msgs


def strip(results):
    return {rid: (r.output_ids, r.finished_reason, [round(v or 0.0, 4) for v, _ in r.output_logprobs])
            for rid, r in results.items()}


@pytest.mark.parametrize("arch,overrides", [
    ("llama", {}), ("qwen3", {}), ("llama", {"chunked_prefill_size": 16, "disable_radix_cache": True}),
    ("llama", {"max_total_tokens": 160})])  # the last retracts requests
def test_overlap_equals_plain_scheduler(tiny_models, arch, overrides):
    plain = run_all(make_scheduler(tiny_models[arch], **overrides), mixed_requests(1),
                    arrivals={3: mixed_requests(2)[:4]})
    overlap = run_all(make_overlap(tiny_models[arch], **overrides), mixed_requests(1),
                      arrivals={3: mixed_requests(2)[:4]})
    assert strip(overlap) == strip(plain)


def test_abort_while_in_flight(tiny_models):
    scheduler = make_overlap(tiny_models["llama"])
    msgs = [request(p, rid=f"a{i}", max_new_tokens=30, temperature=0) for i, p in enumerate(prompts(3, 7))]
    for m in msgs:
        scheduler.add_request(m)
    finished = {}
    for step in range(200):
        if step == 4:
            scheduler.abort("a1")
        for out in scheduler.step():
            if out.finished_reason is not None:
                assert out.rid not in finished, "a request finished twice"
                finished[out.rid] = out.finished_reason["type"]
        if not scheduler.has_work():
            break
    assert finished == {"a0": "length", "a1": "abort", "a2": "length"}
    assert scheduler.kv.used_slots() == scheduler.kv.tree.total_size()  # nothing leaked
