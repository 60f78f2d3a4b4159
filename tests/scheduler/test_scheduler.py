"""Greedy parity with transformers through the real scheduler, model runner, KV pool,
radix cache and sampler, under the batching situations that stress them."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.scheduler.scheduler_harness import hf_greedy, make_scheduler, request, run_all

NEW_TOKENS = 12


def random_prompts(n, vocab, seed=0, lo=3, hi=40, shared_prefix=0):
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(shared_prefix)]
    return [prefix + [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


@pytest.fixture(scope="module")
def hf_models(tiny_models):
    return {arch: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            for arch, path in tiny_models.items()}


def greedy_requests(prompts):
    return [request(p, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, temperature=0)
            for p in prompts]


def assert_parity(results, msgs, hf_model):
    for msg in msgs:
        got = results[msg.rid]
        assert got.finished_reason["type"] == "length"
        assert got.output_ids == hf_greedy(hf_model, msg.input_ids, NEW_TOKENS), msg.rid


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("radix", [True, False])
def test_greedy_matches_transformers(tiny_models, hf_models, arch, batch_size, radix):
    scheduler = make_scheduler(tiny_models[arch], disable_radix_cache=not radix)
    prompts = random_prompts(batch_size, hf_models[arch].config.vocab_size, seed=batch_size,
                             shared_prefix=8)
    msgs = greedy_requests(prompts)
    assert_parity(run_all(scheduler, msgs), msgs, hf_models[arch])


def test_tiny_chunked_prefill_and_late_arrivals(tiny_models, hf_models):
    scheduler = make_scheduler(tiny_models["llama"], chunked_prefill_size=5)
    prompts = random_prompts(6, hf_models["llama"].config.vocab_size, seed=3, lo=10, hi=30)
    first, late = greedy_requests(prompts[:3]), greedy_requests(prompts[3:])
    results = run_all(scheduler, first, arrivals={2: late[:2], 7: late[2:]})
    assert_parity(results, first + late, hf_models["llama"])


def test_small_pool_with_known_lengths_never_retracts(tiny_models, hf_models):
    # 8 requests of up to ~40 + 12 tokens need ~400 slots; the pool has 160. min_new_tokens
    # = max_new_tokens tells admission each one's exact need, so none is over-admitted.
    # (Retraction under uncertain lengths: tests/scheduler/test_retraction.py.)
    scheduler = make_scheduler(tiny_models["qwen2"], max_total_tokens=160, chunked_prefill_size=16)
    prompts = random_prompts(8, hf_models["qwen2"].config.vocab_size, seed=5, lo=20, hi=40)
    msgs = greedy_requests(prompts)
    results = run_all(scheduler, msgs)
    assert scheduler.stats.num_retracted_reqs == 0
    assert scheduler.stats.peak_running_reqs < len(msgs)  # the pool did not hold them all
    assert_parity(results, msgs, hf_models["qwen2"])
    assert scheduler.kv.allocator.available() + scheduler.kv.tree.total_size() == 160


def test_prefix_is_reused_and_reported(tiny_models, hf_models):
    scheduler = make_scheduler(tiny_models["llama"])
    prompt = random_prompts(1, hf_models["llama"].config.vocab_size, seed=9, lo=30, hi=30)[0]
    first = greedy_requests([prompt])
    run_all(scheduler, first)
    again = greedy_requests([prompt])
    results = run_all(scheduler, again)
    assert results[again[0].rid].cached_tokens == len(prompt) - 1
    assert_parity(results, again, hf_models["llama"])


def test_logprobs_match_transformers(tiny_models, hf_models):
    model = hf_models["qwen3"]
    scheduler = make_scheduler(tiny_models["qwen3"], chunked_prefill_size=7)
    prompts = random_prompts(3, model.config.vocab_size, seed=11, lo=10, hi=20)
    msgs = [request(p, max_new_tokens=6, temperature=0, return_logprob=True,
                    logprob_start_len=0, top_logprobs_num=3) for p in prompts]
    results = run_all(scheduler, msgs)
    for msg in msgs:
        got = results[msg.rid]
        full = msg.input_ids + got.output_ids
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([full])).logits[0].float(), -1)
        assert got.input_logprobs[0] == (None, msg.input_ids[0])
        expected_in = [ref[i - 1, full[i]].item() for i in range(1, len(msg.input_ids))]
        assert [t for _, t in got.input_logprobs[1:]] == msg.input_ids[1:]
        assert max(abs(a - b) for (a, _), b in zip(got.input_logprobs[1:], expected_in)) < 1e-4
        n = len(msg.input_ids)
        expected_out = [ref[n - 1 + j, tok].item() for j, tok in enumerate(got.output_ids)]
        assert max(abs(a - b) for (a, _), b in zip(got.output_logprobs, expected_out)) < 1e-4
        top_ids = [t for _, t in got.output_top[0]]
        assert top_ids == ref[n - 1].topk(3).indices.tolist()


def test_seeded_sampling_independent_of_batch(tiny_models):
    vocab = 49152
    target = random_prompts(1, vocab, seed=21)[0]

    def run(batch_extra_seed, n_other):
        scheduler = make_scheduler(tiny_models["llama"])
        others = [request(p, max_new_tokens=10, temperature=1.0)
                  for p in random_prompts(n_other, vocab, seed=batch_extra_seed)]
        mine = request(target, max_new_tokens=10, temperature=0.9, top_p=0.95, seed=1234)
        msgs = others[: n_other // 2] + [mine] + others[n_other // 2:]
        return run_all(scheduler, msgs)[mine.rid].output_ids

    alone = run(0, 0)
    assert alone == run(1, 3) == run(2, 7)
    scheduler = make_scheduler(tiny_models["llama"])
    other_seed = request(target, max_new_tokens=10, temperature=0.9, top_p=0.95, seed=99)
    assert run_all(scheduler, [other_seed])[other_seed.rid].output_ids != alone


def test_abort_queued_and_running(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"], max_running_requests=1)
    running, queued = (request(p, max_new_tokens=50, ignore_eos=True)
                       for p in random_prompts(2, 49152, seed=4))
    scheduler.add_request(running)
    scheduler.add_request(queued)
    scheduler.step()
    outputs = scheduler.abort(queued.rid)
    assert [o.rid for o in outputs] == [queued.rid]
    assert outputs[0].finished_reason["type"] == "abort"
    scheduler.abort(running.rid)
    outputs = scheduler.step()
    assert [(o.rid, o.finished_reason["type"]) for o in outputs] == [(running.rid, "abort")]
    assert not scheduler.has_work()
    assert scheduler.kv.used_slots() == scheduler.kv.tree.total_size()


def test_abort_parent_rid_reaches_its_n_samples(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    prompt = random_prompts(1, 49152, seed=5)[0]
    children = [request(prompt, rid=f"grp-{k}", max_new_tokens=50, ignore_eos=True) for k in range(3)]
    bystander = request(prompt, rid="grp-x", max_new_tokens=3)
    for msg in children + [bystander]:
        scheduler.add_request(msg)
    scheduler.step()
    scheduler.abort("grp")
    results = run_all(scheduler, [])
    assert {rid: r.finished_reason["type"] for rid, r in results.items()} == {
        "grp-0": "abort", "grp-1": "abort", "grp-2": "abort", "grp-x": "length"}


def test_length_finish_reason_in_sglang_shape(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    msg = request(random_prompts(1, 49152, seed=6)[0], max_new_tokens=4, ignore_eos=True)
    assert run_all(scheduler, [msg])[msg.rid].finished_reason == {"type": "length", "length": 4}


def test_flush_cache_only_when_idle(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    msg = request(random_prompts(1, 49152)[0], max_new_tokens=3)
    scheduler.add_request(msg)
    assert scheduler.flush_cache()["success"] is False
    run_all(scheduler, [])
    assert scheduler.kv.tree.total_size() > 0
    assert scheduler.flush_cache()["success"] is True
    assert scheduler.kv.tree.total_size() == 0
    assert scheduler.kv.allocator.available() == scheduler.runner.max_total_tokens


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight", "random"])
def test_policies_all_finish_correctly(tiny_models, hf_models, policy):
    scheduler = make_scheduler(tiny_models["llama"], schedule_policy=policy, max_running_requests=3)
    prompts = random_prompts(6, hf_models["llama"].config.vocab_size, seed=8, shared_prefix=10)
    msgs = greedy_requests(prompts)
    assert_parity(run_all(scheduler, msgs), msgs, hf_models["llama"])


def test_stop_token_ids_and_max_new_tokens_zero(tiny_models, hf_models):
    scheduler = make_scheduler(tiny_models["llama"])
    prompt = random_prompts(1, 49152, seed=30)[0]
    reference = hf_greedy(hf_models["llama"], prompt, NEW_TOKENS)
    stop_at = reference[4]
    stop = request(prompt, max_new_tokens=NEW_TOKENS, temperature=0, stop_token_ids=[stop_at])
    zero = request(prompt, max_new_tokens=0, return_logprob=True, logprob_start_len=0)
    results = run_all(scheduler, [stop, zero])
    got = results[stop.rid]
    assert got.output_ids == reference[: reference.index(stop_at) + 1]
    assert got.finished_reason == {"type": "stop", "matched": stop_at}
    assert results[zero.rid].output_ids == []
    assert len(results[zero.rid].input_logprobs) == len(prompt)


def test_decode_batch_is_logged_every_interval(tiny_models, caplog):
    """--decode-log-interval: SGLang's 'Decode batch' line with the running requests, and a
    'Prefill batch' line per step that computes prompt tokens."""
    scheduler = make_scheduler(tiny_models["llama"], decode_log_interval=4)
    msgs = [request([5, 6, 7], max_new_tokens=9, min_new_tokens=9, temperature=0) for _ in range(3)]
    with caplog.at_level("INFO", logger="rollserve.scheduler.scheduler"):
        run_all(scheduler, msgs)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Decode batch.")]
    assert len(lines) == 2  # 8 decode steps (the first token comes from the prefill)
    assert lines[0].startswith("Decode batch. #running-req: 3, #new-token: 0, #step: 4, ")
    assert float(lines[0].rsplit(": ", 1)[1]) > 0
    prefills = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Prefill batch.")]
    assert prefills == ["Prefill batch. #new-seq: 3, #new-token: 9, #running-req: 0"]
