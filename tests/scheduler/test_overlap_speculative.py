"""Speculative decoding under the overlap scheduler (scheduler/overlap_speculative.py) gives
plain decoding's greedy results with NGRAM, an EAGLE chain and an EAGLE3 tree, through chunked
prefill, the radix cache, streaming, stop strings inside accepted drafts, max_new_tokens,
logprobs, aborts and weight updates between steps; the KV pool is fully free when idle; and
the overlapped path (step i+1 launched before step i's outputs and releases) is the one that
ran. On CPU the two steps do not run concurrently, but every bookkeeping path is the same."""

import dataclasses
import re

import pytest

from rollserve.scheduler.overlap_speculative import OverlapSpeculativeScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests, strip


def make_overlap_spec(model_path, algorithm="NGRAM", draft=None, num_draft_tokens=4, topk=1,
                      num_steps=None, ngram_breadth=1, **overrides) -> OverlapSpeculativeScheduler:
    """NGRAM drafts a chain unless ngram_breadth > 1 (test_speculative.make_spec's chain)."""
    plain = make_scheduler(model_path, **overrides)
    config = dataclasses.replace(plain.config, speculative_algorithm=algorithm,
                                 speculative_num_draft_tokens=num_draft_tokens,
                                 speculative_draft_model_path=draft,
                                 speculative_eagle_topk=topk, speculative_num_steps=num_steps,
                                 speculative_ngram_max_bfs_breadth=ngram_breadth)
    return OverlapSpeculativeScheduler(config, plain.runner, plain.stop_checker.tokenizer,
                                       plain.eos_token_ids)


def streamed(msgs):
    """Every other request streams (its chunks go out from the overlapped half of a step)."""
    return [dataclasses.replace(m, stream=True) if i % 2 else m for i, m in enumerate(msgs)]


def assert_overlapped(spec, deferred=True):
    assert spec.overlapped_steps > 0  # steps launched before the previous one's outputs
    if deferred:  # finished requests released beside the next forward (a pool with room)
        assert spec.deferred_releases > 0
    assert spec.stats.spec.verify_ct > 0 and spec.stats.spec.draft_tokens > 0


def workload():
    """(requests at the start, {step: late arrivals}): prompts of different lengths, two
    samples of one prompt (n > 1: the second finds the first's prefix in the radix cache)."""
    first = repetitive_requests(1)
    return streamed(first[:4] + first[-2:]), {3: repetitive_requests(2)[:2]}


@pytest.fixture(scope="module")
def plain_chunked(tiny_models):
    """Plain decoding of workload() with chunked prefill and the radix cache."""
    msgs, late = workload()
    return strip(run_all(make_scheduler(tiny_models["llama"], chunked_prefill_size=16), msgs,
                         arrivals=late))


@pytest.mark.parametrize("algorithm,topk,steps,tokens,breadth", [
    ("NGRAM", 1, None, 4, 1), ("NGRAM", 1, None, 8, 10), ("EAGLE", 1, None, 4, 1),
    ("EAGLE3", 2, 3, 6, 1)])  # chains, an NGRAM tree and an EAGLE3 tree
def test_greedy_equals_plain_decoding(tiny_models, heads, plain_chunked, algorithm, topk, steps,
                                      tokens, breadth):
    draft = heads.get(algorithm.lower())
    spec = make_overlap_spec(tiny_models["llama"], algorithm, draft, tokens, topk, steps,
                             ngram_breadth=breadth, chunked_prefill_size=16)
    msgs, late = workload()
    got = run_all(spec, msgs, arrivals=late)
    assert strip(got) == plain_chunked
    assert got["s1-n-1"].cached_tokens > 0
    assert_overlapped(spec)
    assert_pool_free(spec)


def test_tight_pool_cuts_drafts_and_retracts(tiny_models):
    """A pool this small retracts requests: finished requests then give their KV back
    before the next batch is built, and the results are still plain decoding's."""
    msgs = lambda: streamed(repetitive_requests(1, n=4))  # noqa: E731
    plain = run_all(make_scheduler(tiny_models["llama"], max_total_tokens=100), msgs())
    spec = make_overlap_spec(tiny_models["llama"], max_total_tokens=100)
    assert strip(run_all(spec, msgs())) == strip(plain)
    assert spec.stats.num_retracted_reqs > 0 and spec.stats.spec.accept_tokens > 0
    assert_overlapped(spec, deferred=False)
    assert_pool_free(spec)


def spy_commits(spec, rid):
    """Records, for each step's commit of request `rid`: (tokens verified, tokens kept)."""
    seen, commit = [], spec._commit

    def recording(req, tokens):
        before = len(req.output_ids)
        commit(req, tokens)
        if req.rid == rid:
            seen.append((len(tokens), len(req.output_ids) - before))
    spec._commit = recording
    return seen


def test_stop_string_inside_an_accepted_draft(tiny_models):
    """A stop string that ends on a draft token the verify step accepted, with more tokens
    accepted after it: the request ends exactly there, as plain decoding ends it."""
    prompt = [17, 45, 99, 120, 17, 45, 99, 120, 17, 45]
    probe = make_overlap_spec(tiny_models["llama"], num_draft_tokens=6)
    commits = spy_commits(probe, "ref")
    ids = run_all(probe, [request(prompt, rid="ref", temperature=0, max_new_tokens=30)])["ref"].output_ids
    # the first step that kept an accepted draft (2+ tokens): its first token is a draft
    at = sum(kept for _, kept in commits[:next(k for k, (_, kept) in enumerate(commits) if kept > 1)])
    decode = probe.stop_checker.tokenizer.decode
    before, upto = decode(ids[:at]), decode(ids[:at + 1])
    stop = next(upto[-k:] for k in range(1, len(upto) + 1) if upto[-k:] not in before)
    msgs = lambda: ([request(prompt, rid="stop", temperature=0, max_new_tokens=30, stop=[stop],  # noqa: E731
                             stream=True)] +
                    [request(prompt, rid=f"len{n}", temperature=0, max_new_tokens=n, ignore_eos=True)
                     for n in (1, 2, 5, 8)])
    want = run_all(make_scheduler(tiny_models["llama"]), msgs())
    spec = make_overlap_spec(tiny_models["llama"], num_draft_tokens=6)
    commits = spy_commits(spec, "stop")
    got = run_all(spec, msgs())
    assert got["stop"].finished_reason == {"type": "stop", "matched": stop}
    assert got["stop"].output_ids == ids[:at + 1]
    verified, kept = commits[-1]
    assert kept == 1 < verified  # stopped on an accepted draft; what followed it was dropped
    assert strip(got) == strip(want)
    for n in (1, 2, 5, 8):
        assert got[f"len{n}"].finished_reason == {"type": "length", "length": n}
    assert spec.overlapped_steps > 0
    assert_pool_free(spec)


def test_abort_mid_stream(tiny_models):
    spec = make_overlap_spec(tiny_models["llama"])
    msgs = [request([7, 8, 9, 10] * 4 + [i], rid=f"a{i}", max_new_tokens=40, temperature=0,
                    ignore_eos=True, stream=True) for i in range(3)]
    for m in msgs:
        spec.add_request(m)
    finished, tokens = {}, {m.rid: 0 for m in msgs}
    for step in range(200):
        if step == 4:
            assert spec.in_flight is not None
            spec.abort("a1")  # its verify is in flight: the step settles it as aborted
        for out in spec.step():
            tokens[out.rid] += len(out.new_ids)
            if out.finished_reason is not None:
                assert out.rid not in finished, "a request finished twice"
                finished[out.rid] = out.finished_reason["type"]
        if not spec.has_work():
            break
    assert finished == {"a0": "length", "a1": "abort", "a2": "length"}
    assert 0 < tokens["a1"] < 40 and tokens["a0"] == tokens["a2"] == 40
    assert spec.overlapped_steps > 0
    assert_pool_free(spec)


def test_weight_update_between_steps_labels_tokens_as_without_overlap(tiny_models):
    """A control call drains the step in flight first: its tokens were verified by the old
    weights and carry the old label; every later token carries the new one."""
    spec = make_overlap_spec(tiny_models["llama"], chunked_prefill_size=16)
    msgs = repetitive_requests(3, n=4)
    want = run_all(make_scheduler(tiny_models["llama"], chunked_prefill_size=16),
                   [dataclasses.replace(m) for m in msgs])
    for m in msgs:
        spec.add_request(m)
    outputs, before = [], None
    for step in range(500):
        if step == 6:
            outputs.extend(spec.drain())
            assert spec.in_flight is None
            before = {r.rid: len(r.output_ids) for r in spec.running}
            spec.weight_version = "v2"  # what an update's weight_version does
            outputs.extend(spec.weights_changed("retract"))
        outputs.extend(spec.step())
        if not spec.has_work():
            break
    assert before, "no request was running at the update"
    final = {o.rid: o for o in outputs if o.finished_reason is not None}
    tokens = {rid: [t for o in outputs if o.rid == rid for t in o.new_ids] for rid in final}
    assert tokens == {rid: r.output_ids for rid, r in want.items()}
    for rid, n in before.items():
        spans = final[rid].weight_version_spans
        assert spans == ([[0, "default"], [n, "v2"]] if n else [[0, "v2"]]), (rid, spans)
    assert_pool_free(spec)


def test_sampled_and_constrained_requests_equal_the_non_overlap_scheduler(tiny_models):
    """Seeded sampled rows (speculative sampling) and grammar-constrained rows: the overlapped
    steps build the batches the non-overlap speculative scheduler builds, so even sampled
    tokens come out the same (and the distribution is the one test_speculative.py checks)."""
    from tests.scheduler.test_grammar import PET, prompts, text_of
    from tests.scheduler.test_speculative import make_spec

    def msgs():
        out = [request(p, rid=f"re{i}", regex=PET, temperature=1.0, max_new_tokens=40, seed=i)
               for i, p in enumerate(prompts(2))]
        out += [request([5, 6, 7, 8] * 6, rid=f"t{i}", temperature=1.0, top_p=0.9, top_k=20,
                        max_new_tokens=16, seed=10 + i, stream=bool(i % 2)) for i in range(2)]
        return out + [request(prompts(1)[0] * 3, rid="free", temperature=0, max_new_tokens=12)]

    want = run_all(make_spec(tiny_models["llama"]), msgs())
    spec = make_overlap_spec(tiny_models["llama"])
    got = run_all(spec, msgs())
    assert strip(got) == strip(want)
    for rid, result in got.items():
        if rid.startswith("re"):
            assert re.fullmatch(PET, text_of(spec, result.output_ids)), rid
    assert spec.overlapped_steps > 0 and spec.stats.spec.accept_tokens > 0
    assert_pool_free(spec)
