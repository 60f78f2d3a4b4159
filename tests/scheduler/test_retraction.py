"""A scheduler over a KV pool far too small for its requests' outputs (lengths unknown to
admission: no ignore_eos, no min_new_tokens): the pool over-commits, requests are
retracted in batches and come back, and every one still ends with exactly the tokens it
produces without memory pressure."""

import random

import pytest

from rollserve.scheduler.overlap_scheduler import OverlapScheduler
from rollserve.scheduler.retraction import pick_and_retract, retraction_order
from rollserve.scheduler.request import Req
from rollserve.core.sampling_params import SamplingParams
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all

NEW_TOKENS = 40
POOL = 200  # 8 requests of ~12 + 40 tokens need ~420 slots


def prompts(n=8, seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 49152) for _ in range(rng.randint(8, 16))] for _ in range(n)]


def requests(prompt_list, **params):
    params = {"max_new_tokens": NEW_TOKENS, "temperature": 0, **params}
    return [request(p, rid=f"q{i}", **params) for i, p in enumerate(prompt_list)]


def outputs(scheduler, msgs):
    results = run_all(scheduler, msgs)
    return {rid: (got.output_ids, got.finished_reason["type"]) for rid, got in results.items()}


def assert_idle_and_free(scheduler, pool):
    kv = scheduler.kv
    assert not scheduler.has_work() and not kv.queued_locks
    assert kv.req_pool.available() == scheduler.runner.max_running_requests
    if kv.tree is not None:
        assert kv.tree.protected_size() == 0
        assert kv.allocator.available() + kv.tree.total_size() == pool
    assert scheduler.flush_cache()["success"]
    assert kv.allocator.available() == pool


@pytest.mark.parametrize("radix,overlap", [(True, False), (False, False), (True, True)])
def test_greedy_outputs_identical_under_pressure(tiny_models, radix, overlap):
    msgs = prompts()
    # conservativeness 0.3: the ratio starts at 0.21, so admission over-commits for sure
    reference = outputs(make_scheduler(tiny_models["llama"]), requests(msgs))
    pressured = make_scheduler(tiny_models["llama"], max_total_tokens=POOL,
                               schedule_conservativeness=0.3, disable_radix_cache=not radix)
    if overlap:  # the overlap scheduler drains its step in flight before retracting
        pressured = OverlapScheduler(pressured.config, pressured.runner,
                                     pressured.stop_checker.tokenizer, pressured.eos_token_ids)
    got = outputs(pressured, requests(msgs))
    assert got == reference
    stats = pressured.stats
    assert 0 < stats.num_retracted_reqs <= 2 * len(msgs)  # batches, not one per step forever
    assert pressured.new_token_ratio.value >= pressured.new_token_ratio.init  # jumped back up
    if radix:  # the retracted requests' KV waited in the radix cache
        assert pressured.kv.recomputed_tokens < stats.num_retracted_reqs * NEW_TOKENS
    else:
        assert pressured.kv.recomputed_tokens > 0
    assert_idle_and_free(pressured, POOL)


def test_seeded_samples_reproducible_under_pressure(tiny_models):
    msgs = prompts(seed=1)
    params = {"temperature": 1.0, "top_p": 0.9}
    seeded = [request(p, rid=f"q{i}", max_new_tokens=NEW_TOKENS, seed=100 + i, **params)
              for i, p in enumerate(msgs)]
    reference = outputs(make_scheduler(tiny_models["qwen2"]), seeded)
    pressured = make_scheduler(tiny_models["qwen2"], max_total_tokens=POOL,
                               schedule_conservativeness=0.3)
    again = [request(p, rid=f"q{i}", max_new_tokens=NEW_TOKENS, seed=100 + i, **params)
             for i, p in enumerate(msgs)]
    assert outputs(pressured, again) == reference
    assert pressured.stats.num_retracted_reqs > 0
    assert_idle_and_free(pressured, POOL)


def test_aborting_a_retracted_request_frees_its_cached_kv(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"], max_total_tokens=POOL,
                               schedule_conservativeness=0.3)
    for msg in requests(prompts(seed=2)):
        scheduler.add_request(msg)
    for _ in range(400):
        scheduler.step()
        queued = [r for r in scheduler.waiting if r.num_retractions]
        if queued:
            break
    assert queued, "nothing was retracted"
    for req in queued:
        scheduler.abort(req.rid)
    assert not any(r in scheduler.kv.queued_locks for r in queued)
    while scheduler.has_work():
        scheduler.step()
    assert_idle_and_free(scheduler, POOL)


def _req(rid, n_in, n_out):
    req = Req(rid=rid, input_ids=[5] * n_in, sampling_params=SamplingParams(max_new_tokens=100))
    req.output_ids = [7] * n_out
    return req


def test_retraction_takes_the_least_work_first_and_enough_at_once():
    running = [_req("old", 10, 60), _req("young_long", 30, 5), _req("young", 10, 5), _req("mid", 10, 30)]
    assert [r.rid for r in retraction_order(running)] == ["young_long", "young", "mid", "old"]
    free = [0]

    def retract(req):
        running.remove(req)
        free[0] += req.seq_len

    gone = pick_and_retract(list(running), lambda: free[0], retract)
    # 40 slots (20 steps x 2 requests) are free after two retractions; one more would lose work
    assert [r.rid for r in gone] == ["young_long", "young"]
    assert [r.rid for r in running] == ["old", "mid"]
    # never the last one: with no room at all, one request stays (the caller aborts it)
    assert len(pick_and_retract([_req("a", 5, 1)], lambda: 0, lambda r: None)) == 0
