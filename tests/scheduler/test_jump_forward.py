"""Jump-forward decoding (scheduler/jump_forward.py): the token boundary rules on the real
tokenizer, sampled outputs that still follow their schema with fewer forwards on a tiny
random model, and, on the default model, forced tokens whose logprobs and KV agree with a
plain prefill of the same tokens."""

import json

import pytest
import torch

from rollserve.core.tokenizer import load_tokenizer
from rollserve.scheduler.jump_forward import retokenize
from rollserve.scheduler.overlap_scheduler import OverlapScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all

jsonschema = pytest.importorskip("jsonschema")

# long fixed keys: most of the output is forced by the grammar
ORDER = {"type": "object", "additionalProperties": False,
         "properties": {"customer_full_name": {"type": "string", "maxLength": 8},
                        "order_identifier_number": {"type": "integer", "minimum": 0,
                                                    "maximum": 999},
                        "delivery_status": {"enum": ["shipped", "delivered"]}},
         "required": ["customer_full_name", "order_identifier_number", "delivery_status"]}


def prompts(n, length=6):
    return [[1] + [(31 + 11 * i + 7 * k) % 4000 + 3 for k in range(length - 1)] for i in range(n)]


def text_of(scheduler, ids):
    return scheduler.stop_checker.tokenizer.decode(ids, skip_special_tokens=True)


def test_retokenize_merges_across_the_border_and_backs_off(default_model_dir):
    tok = load_tokenizer(default_model_dir)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    head = enc('{"status": "s')
    # the newest token ("s", not yet computed) becomes "sh" as the tokenizer spells
    # "shipped"; the closing quote is held back for the model (it may merge with what follows)
    replaced, tail = retokenize(tok, head, 'hipped"', may_replace_last=True)
    assert [replaced] + tail == enc('{"status": "shipped"')[len(head) - 1:-1]
    assert tok.decode([replaced]) == "sh" and replaced != head[-1]
    # not allowed to replace it (streamed, or its logprob recorded): backs off
    assert retokenize(tok, head, 'hipped"', may_replace_last=False) is None
    # a clean border: the forced key's tokens follow, the last one held back
    head = enc('{"')
    replaced, tail = retokenize(tok, head, 'customer_full_name"', may_replace_last=True)
    assert replaced is None
    assert tail == enc('{"customer_full_name"')[len(head):-1]
    # one forced token and nothing to replace: nothing to jump
    assert retokenize(tok, enc('{"a'), '"', may_replace_last=True) is None


def run_orders(path, n, jump, **kwargs):
    # json.dumps' layout: a random model would otherwise ramble in whitespace
    scheduler = make_scheduler(path, disable_jump_forward=not jump,
                               constrained_json_disable_any_whitespace=True, **kwargs)
    msgs = [request(p, rid=f"o{i}", json_schema=json.dumps(ORDER), temperature=1.0,
                    max_new_tokens=120, seed=i, return_logprob=True, top_logprobs_num=2)
            for i, p in enumerate(prompts(n))]
    before = scheduler.runner.num_forwards
    results = run_all(scheduler, msgs)
    return scheduler, results, scheduler.runner.num_forwards - before


def test_sampled_outputs_follow_the_schema_with_fewer_forwards(tiny_models):
    path = tiny_models["llama"]
    jumped, results, forwards = run_orders(path, 8, jump=True, max_running_requests=4)
    for rid, got in results.items():
        text = text_of(jumped, got.output_ids)
        assert got.finished_reason["type"] == "stop", (rid, text)
        jsonschema.validate(json.loads(text), ORDER)
        # every output token, forced or sampled, has its logprob and top-2, in order
        assert [t for _, t in got.output_logprobs] == got.output_ids
        assert len(got.output_top) == len(got.output_ids)
        assert all(lp <= 0.0 and torch.isfinite(torch.tensor(lp)) for lp, _ in got.output_logprobs)
    stats = jumped.info()
    assert stats["jump_forward_tokens_total"] > 8 * 12  # most of the three keys
    assert stats["jump_forward_ct_total"] > 0
    plain, plain_results, plain_forwards = run_orders(path, 8, jump=False, max_running_requests=4)
    assert "jump_forward_tokens_total" not in plain.info()
    assert forwards < 0.7 * plain_forwards, (forwards, plain_forwards)
    for scheduler in (jumped, plain):  # nothing held once all ended; the tree keeps the rest
        assert scheduler.kv.req_pool.available() == scheduler.runner.max_running_requests
        assert scheduler.kv.used_slots() == scheduler.kv.tree.total_size()


def test_n_samples_share_the_prompt_cache_and_streams_keep_their_tokens(tiny_models):
    scheduler = make_scheduler(tiny_models["qwen2"], constrained_json_disable_any_whitespace=True)
    prompt = prompts(1, length=40)[0]
    def wave(tag):  # n=3 samples of one prompt, two of them streamed
        return run_all(scheduler, [
            request(prompt, rid=f"{tag}-{k}", json_schema=json.dumps(ORDER), temperature=1.0,
                    max_new_tokens=120, seed=k, stream=k != 1) for k in range(3)])

    first, second = wave("a"), wave("b")
    for got in list(first.values()) + list(second.values()):
        jsonschema.validate(json.loads(text_of(scheduler, got.output_ids)), ORDER)
    assert all(got.cached_tokens >= len(prompt) - 1 for got in second.values())
    assert [g.output_ids for g in first.values()] == [g.output_ids for g in second.values()]
    assert scheduler.info()["jump_forward_tokens_total"] > 0


def test_tokens_forced_at_max_new_tokens_end_the_request_by_length(tiny_models):
    scheduler = make_scheduler(tiny_models["llama"])
    got = run_all(scheduler, [request(prompts(1)[0], rid="short", json_schema=json.dumps(ORDER),
                                      temperature=0, max_new_tokens=5, return_logprob=True)])
    got = got["short"]
    assert got.finished_reason == {"type": "length", "length": 5}
    assert len(got.output_ids) == 5 and len(got.output_logprobs) == 5
    assert text_of(scheduler, got.output_ids).startswith('{')
    assert scheduler.kv.used_slots() == scheduler.kv.tree.total_size()


def test_overlap_scheduler_does_not_jump(tiny_models):
    plain = make_scheduler(tiny_models["llama"])
    assert plain.jump_forward is not None
    overlap = OverlapScheduler(plain.config, plain.runner, plain.stop_checker.tokenizer,
                               plain.eos_token_ids)
    assert overlap.jump_forward is None  # as SGLang: the next decode input is still in flight


def test_forced_tokens_logprobs_and_kv_match_a_prefill_on_the_default_model(default_model_dir):
    """Greedy, the default model: the output parses; every forced token's logprob equals
    the logprob a plain prefill of prompt + output gives at its position (the KV the
    jump's extend wrote is right), and the counters saw the jump."""
    scheduler = make_scheduler(default_model_dir)
    tok = scheduler.stop_checker.tokenizer
    prompt = tok.encode(tok.apply_chat_template(
        [{"role": "user", "content": "Give me one order record as JSON."}],
        add_generation_prompt=True, tokenize=False), add_special_tokens=False)
    got = run_all(scheduler, [request(prompt, rid="g", json_schema=json.dumps(ORDER),
                                      temperature=0, max_new_tokens=100,
                                      return_logprob=True)])["g"]
    jsonschema.validate(json.loads(text_of(scheduler, got.output_ids)), ORDER)
    assert scheduler.info()["jump_forward_tokens_total"] >= 10  # most of the keys
    full = prompt + got.output_ids[:-1]  # the last (EOS) was sampled, never fed
    check = run_all(make_scheduler(default_model_dir, disable_radix_cache=True),
                    [request(full, rid="p", max_new_tokens=1, return_logprob=True,
                             logprob_start_len=len(prompt) - 1)])["p"]
    tail = check.input_logprobs[-(len(got.output_ids) - 1):]
    assert [t for _, t in tail] == got.output_ids[:-1]
    # a greedy row's logprob is the plain log_softmax: forced tokens' are unmasked, so they
    # equal the prefill's; sampled ones are of the masked distribution (>= the prefill's)
    matched = 0
    for (lp, token), (ref, _) in zip(got.output_logprobs, tail):
        assert lp >= ref - 1e-4, (token, lp, ref)
        matched += abs(lp - ref) < 1e-4
    assert matched >= scheduler.info()["jump_forward_tokens_total"]
