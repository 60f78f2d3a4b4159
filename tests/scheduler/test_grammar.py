"""Constrained decoding in the scheduler (scheduler/grammar.py) on tiny random models: a
random model follows nothing on its own, so every output matching its grammar is the
grammar's doing. Covers the compile queue, dead ends, compile failures, logprobs of the
constrained distribution, the overlap scheduler, retraction, restart and lm_head padding."""

import math
import os
import re
import threading

import pytest
import torch

from rollserve.scheduler.overlap_scheduler import OverlapScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.tiny_models import tiny_config

PET = r"(cat|dog)-[0-9]{1,3}( [a-z]{1,4}){0,2}"  # at most ~14 tokens: ends by the grammar
EBNF = 'root ::= "[" item ("," item){0,2} "]"\nitem ::= [0-9] | "x"'


def text_of(scheduler, ids):
    return scheduler.stop_checker.tokenizer.decode(ids, skip_special_tokens=True)


def prompts(n, length=5):
    return [[1] + [(17 + 7 * i + 13 * k) % 4000 + 3 for k in range(length - 1)] for i in range(n)]


def overlap_of(plain):
    return OverlapScheduler(plain.config, plain.runner, plain.stop_checker.tokenizer,
                            plain.eos_token_ids)


def test_sampled_outputs_match_their_regex_and_ebnf(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    msgs = [request(p, rid=f"re{i}", regex=PET, temperature=1.0, max_new_tokens=40, seed=i)
            for i, p in enumerate(prompts(6))]
    msgs += [request(p, rid=f"bnf{i}", ebnf=EBNF, temperature=1.0, max_new_tokens=40, seed=i)
             for i, p in enumerate(prompts(3))]
    msgs.append(request(prompts(1)[0], rid="free", temperature=1.0, max_new_tokens=6, seed=3))
    results = run_all(scheduler, msgs)
    for rid, got in results.items():
        if rid == "free":
            assert len(got.output_ids) == 6  # an unconstrained row in the same batches
            continue
        text = text_of(scheduler, got.output_ids)
        assert got.finished_reason["type"] == "stop", (rid, text)  # the grammar ended it
        assert got.output_ids[-1] in scheduler.eos_token_ids
        if rid.startswith("re"):
            assert re.fullmatch(PET, text), (rid, text)
        else:
            assert re.fullmatch(r"\[[0-9x](,[0-9x]){0,2}\]", text), (rid, text)
    # one compile per distinct grammar, shared by the requests that ask for it
    assert scheduler.grammar.compiled("regex", PET) is scheduler.grammar.compiled("regex", PET)


def test_dead_ends_and_compile_failures_end_only_their_request(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    results = run_all(scheduler, [
        request([1, 5, 9], rid="dead", regex=r"[^\s\S]", max_new_tokens=8),
        request([1, 5, 9], rid="bad", regex="a(b", max_new_tokens=4),  # the front end's 400, skipped
        request([1, 5, 9], rid="ok", regex="ab", temperature=0, max_new_tokens=8)])
    dead = results["dead"]
    assert dead.output_ids == [] and dead.finished_reason["type"] == "abort"
    assert "no token can continue" in dead.finished_reason["message"]
    bad = results["bad"].finished_reason
    assert bad["type"] == "abort" and bad["message"].startswith("regex: ")
    assert "parenthesis" in bad["message"]
    assert text_of(scheduler, results["ok"].output_ids) == "ab"
    assert not scheduler.has_work()
    assert scheduler.kv.req_pool.available() == scheduler.runner.max_running_requests


def test_logprobs_describe_the_constrained_distribution(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    got = run_all(scheduler, [request([1, 5, 9], rid="lp", regex="[0-9]", temperature=0,
                                      max_new_tokens=3, return_logprob=True,
                                      top_logprobs_num=12)])["lp"]
    top = got.output_top[0]
    allowed = [(v, t) for v, t in top if v is not None and math.isfinite(v)]
    # SmolLM2's tokenizer has one token per digit: exactly ten allowed, summing to 1
    assert sorted(text_of(scheduler, [t]) for _, t in allowed) == [str(d) for d in range(10)]
    assert math.isclose(sum(math.exp(v) for v, _ in allowed), 1.0, rel_tol=1e-4)
    assert got.output_logprobs[0][1] == allowed[0][1]  # greedy took the most likely digit


def test_a_request_waits_for_its_grammar_while_the_batch_runs(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    backend = scheduler.grammar
    gate = threading.Event()
    real_compile = backend._compile

    def held_compile(kind, text):  # the real compile, started only when the test says
        gate.wait(timeout=30)
        return real_compile(kind, text)

    backend._compile = held_compile
    scheduler.add_request(request([1, 5, 9], rid="free", temperature=0, max_new_tokens=30))
    scheduler.add_request(request([1, 6, 9], rid="json", temperature=0, max_new_tokens=30,
                                  json_schema='{"type": "integer", "maximum": 5000}'))
    decoded = 0
    for _ in range(5):
        for out in scheduler.step():
            decoded += len(out.new_ids) if out.rid == "free" else 0
    waiting = [r.rid for r in scheduler.waiting]
    assert waiting == ["json"] and decoded == 0  # not streamed; check the running request
    assert len(scheduler.running) == 1 and len(scheduler.running[0].output_ids) == 5
    gate.set()
    results = run_all(scheduler, [])
    text = text_of(scheduler, results["json"].output_ids)
    assert int(text) <= 5000 and results["json"].finished_reason["type"] == "stop"


def test_overlap_scheduler_and_retraction_keep_matchers_in_step(tiny_models):
    """The overlap scheduler (sampling deferred until the previous token is accepted) under
    a pool so small that requests are retracted and come back: the same tokens as the plain
    scheduler with room to spare."""
    digits = "[0-9]{10,14}"  # one token a digit: long enough to be caught by a retraction

    def msgs():
        out = [request(p, rid=f"g{i}", regex=digits, temperature=1.0, max_new_tokens=40,
                       seed=50 + i) for i, p in enumerate(prompts(4, length=16))]
        out += [request(p, rid=f"f{i}", temperature=0, max_new_tokens=16)
                for i, p in enumerate(prompts(2, length=16))]
        return out

    reference = run_all(make_scheduler(tiny_models["llama"]), msgs())
    scheduler = overlap_of(make_scheduler(tiny_models["llama"], max_total_tokens=60,
                                          schedule_conservativeness=0.3))
    got = run_all(scheduler, msgs())
    assert {k: v.output_ids for k, v in got.items()} == {k: v.output_ids for k, v in reference.items()}
    assert scheduler.stats.num_retracted_reqs > 0
    for rid, result in got.items():
        if rid.startswith("g"):
            assert re.fullmatch(digits, text_of(scheduler, result.output_ids))


def test_a_restart_after_a_weight_update_rebuilds_the_matcher(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    for i, p in enumerate(prompts(3)):
        scheduler.add_request(request(p, rid=f"r{i}", regex=PET, temperature=1.0,
                                      max_new_tokens=40, seed=i))
    for _ in range(4):  # part of each answer is out, none sent (not streamed)
        assert scheduler.step() == []
    assert all(r.output_ids for r in scheduler.running)
    scheduler.weights_changed("restart")
    results = run_all(scheduler, [])
    assert set(results) == {"r0", "r1", "r2"}
    for got in results.values():
        assert re.fullmatch(PET, text_of(scheduler, got.output_ids))


def test_lm_head_padding_past_the_tokenizer_is_never_sampled(tmp_path, default_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    config = tiny_config("llama", len(tokenizer) + 96, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    prompt = [1, 5, 9]
    with torch.no_grad():  # the padding rows point where the prompt's last hidden state does
        hidden = model(torch.tensor([prompt]), output_hidden_states=True).hidden_states[-1][0, -1]
        model.lm_head.weight[len(tokenizer):] = 10 * hidden / hidden.norm()
    path = os.path.join(str(tmp_path), "padded")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    scheduler = make_scheduler(path)
    results = run_all(scheduler, [
        request(prompt, rid="free", temperature=0, max_new_tokens=1),
        request(prompt, rid="re", regex="[a-z]{3}", temperature=1.0, max_new_tokens=8, seed=1)])
    assert results["free"].output_ids[0] >= len(tokenizer)
    assert re.fullmatch("[a-z]{3}", text_of(scheduler, results["re"].output_ids))


def test_compact_json_when_any_whitespace_is_off(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"], constrained_json_disable_any_whitespace=True)
    schema = '{"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}'
    results = run_all(scheduler, [request(p, rid=f"j{i}", json_schema=schema, temperature=1.0,
                                          max_new_tokens=16, seed=i)
                                  for i, p in enumerate(prompts(4))])
    for got in results.values():
        text = text_of(scheduler, got.output_ids)
        assert re.fullmatch(r"\[([0-9](, [0-9]){0,2})?\]", text), text  # json.dumps layout


def test_constrained_requests_under_speculative_decoding(tiny_models):
    """With NGRAM speculation on, a constrained request takes no drafts and its row is masked:
    outputs still match, beside unconstrained requests that do speculate."""
    from tests.scheduler.test_speculative import make_spec

    scheduler = make_spec(tiny_models["llama"])
    msgs = [request(p, rid=f"re{i}", regex=PET, temperature=1.0, max_new_tokens=40, seed=i)
            for i, p in enumerate(prompts(4))]
    msgs.append(request(prompts(1)[0] * 3, rid="free", temperature=0, max_new_tokens=12))
    results = run_all(scheduler, msgs)
    for rid, got in results.items():
        if rid != "free":
            assert re.fullmatch(PET, text_of(scheduler, got.output_ids)), rid
    assert scheduler.kv.available_slots() == scheduler.runner.max_total_tokens
