"""Speculative decoding with draft models (EAGLE, EAGLE3, NEXTN) gives the plain scheduler's
greedy results; a trained EAGLE head gets drafts accepted; sampling at temperature 1 keeps the
target's distribution; the KV pool is fully free when idle; a weight update keeps NEXTN's
layer in step with the target. Draft checkpoints are real safetensors folders in the formats
SGLang loads (tests/scheduler/draft_checkpoints.py)."""

import dataclasses
import random
from collections import Counter

import pytest
import torch

from rollserve.scheduler.speculative import SpeculativeScheduler
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests, strip

CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515, 6: 22.458, 7: 24.322, 8: 26.124}


def make_spec(model_path, algorithm, draft=None, num_draft_tokens=4, **overrides):
    plain = make_scheduler(model_path, **overrides)
    config = dataclasses.replace(plain.config, speculative_algorithm=algorithm,
                                 speculative_num_draft_tokens=num_draft_tokens,
                                 speculative_draft_model_path=draft)
    return SpeculativeScheduler(config, plain.runner, plain.stop_checker.tokenizer,
                                plain.eos_token_ids)


@pytest.mark.parametrize("algorithm,overrides", [
    ("EAGLE", {}), ("EAGLE", {"chunked_prefill_size": 16, "max_total_tokens": 120}),
    ("EAGLE3", {})])
def test_heads_greedy_equal_plain_scheduler(tiny_models, heads, algorithm, overrides):
    msgs = lambda: repetitive_requests(1)[:6]  # noqa: E731
    plain = run_all(make_scheduler(tiny_models["llama"], **overrides), msgs(),
                    arrivals={4: repetitive_requests(2)[:3]})
    spec = make_spec(tiny_models["llama"], algorithm, heads[algorithm.lower()], **overrides)
    got = run_all(spec, msgs(), arrivals={4: repetitive_requests(2)[:3]})
    assert strip(got) == strip(plain)
    assert spec.stats.spec.verify_ct > 0 and spec.stats.spec.draft_tokens > 0
    assert_pool_free(spec)


def test_a_head_of_the_wrong_kind_is_refused_naming_the_flag(tiny_models, heads):
    with pytest.raises(ValueError, match="^speculative_draft_model_path: EAGLE3 expects"):
        make_spec(tiny_models["llama"], "EAGLE3", heads["eagle"])
    with pytest.raises(ValueError, match="^speculative_algorithm NEXTN needs a DeepSeek"):
        make_spec(tiny_models["llama"], "NEXTN")


def _greedy_prompts(n=6, length=24):
    return [request([random.Random(k).randrange(3, 500) for _ in range(6)], rid=f"q{k}",
                    temperature=0, max_new_tokens=length, ignore_eos=True) for k in range(n)]


def test_trained_eagle_head_gets_drafts_accepted(trained):
    small, head = trained
    plain = run_all(make_scheduler(small), _greedy_prompts())
    spec = make_spec(small, "EAGLE", head)
    got = run_all(spec, _greedy_prompts())
    assert strip(got) == strip(plain)
    stats = spec.stats.spec
    mean_accept_length = (stats.accept_tokens + stats.verify_ct) / stats.verify_ct
    assert mean_accept_length > 1.0
    assert_pool_free(spec)


def test_temperature_one_keeps_the_target_distribution(trained):
    """The first two sampled tokens over many requests (top_k 3, the second one verified
    against an EAGLE draft) against the target's own probabilities of each pair."""
    prompt = [random.Random(7).randrange(3, 500) for _ in range(6)]
    small, head = trained
    spec = make_spec(small, "EAGLE", head, num_draft_tokens=2)
    n = 600
    # max_new_tokens 3: the step after the first token verifies one draft
    msgs = [request(prompt, rid=f"d{i}", temperature=1.0, top_k=3, max_new_tokens=3,
                    ignore_eos=True) for i in range(n)]
    got = run_all(spec, msgs)
    assert spec.stats.spec.accept_tokens > 0  # some second tokens came from an accepted draft
    assert_first_pairs_follow_target(small, prompt, got, n)


def assert_first_pairs_follow_target(model_path, prompt, got, n, support=None):
    """Chi-square: the first two tokens of the n results against the target's top-3 pairs
    (or its pairs over the token ids `support`, where a logit bias kept sampling to them)."""
    from transformers import AutoModelForCausalLM

    pairs = Counter(tuple(r.output_ids[:2]) for r in got.values())
    target = AutoModelForCausalLM.from_pretrained(model_path).eval()

    def top3(ids):
        with torch.no_grad():
            logits = target(torch.tensor([ids])).logits[0, -1]
        if support is None:
            values, index = logits.topk(3)
        else:
            values, index = logits[support], torch.tensor(support)
        return dict(zip(index.tolist(), torch.softmax(values, -1).tolist()))

    expected = {(a, b): pa * pb for a, pa in top3(prompt).items()
                for b, pb in top3(prompt + [a]).items()}
    assert set(pairs) <= set(expected)
    cells = [(pairs.get(k, 0), n * p) for k, p in expected.items()]
    big = [(o, e) for o, e in cells if e >= 5]
    rest = [(o, e) for o, e in cells if e < 5]
    if rest:
        big.append((sum(o for o, _ in rest), sum(e for _, e in rest)))
    stat = sum((o - e) ** 2 / e for o, e in big)
    assert stat < CHI2_999[len(big) - 1]


def test_nextn_greedy_equal_and_follows_weight_updates(deepseek_with_mtp):
    folder = deepseek_with_mtp
    msgs = lambda: repetitive_requests(3)[:5]  # noqa: E731
    plain = run_all(make_scheduler(folder), msgs())
    spec = make_spec(folder, "NEXTN", num_draft_tokens=3)
    got = run_all(spec, msgs())
    assert strip(got) == strip(plain)
    assert spec.stats.spec.draft_tokens > 0
    assert_pool_free(spec)
    # an update of the target's checkpoint tensors (MTP layer included) reaches the draft
    model, draft = spec.runner.model, spec.drafter.draft.model
    name = f"model.layers.{model.config.num_hidden_layers}.eh_proj.weight"
    new = torch.randn_like(model.mtp_weights[name])
    model.load_weights([(name, new)])
    spec.weights_changed("retract")
    torch.testing.assert_close(draft.eh_proj.weight, new)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "torch_native"])
def test_cuda_heads_greedy_equal_overlap_scheduler_with_graphs(tiny_models, heads, trained,
                                                               deepseek_with_mtp, backend):
    """On CUDA the plain run is the server's (overlap, decode CUDA graphs); with a draft model
    every forward is eager and keeps its hidden states. float32: no argmax is a rounding tie."""
    small, head = trained
    cases = [(tiny_models["llama"], "EAGLE", heads["eagle"], repetitive_requests(1)),
             (tiny_models["llama"], "EAGLE3", heads["eagle3"], repetitive_requests(1)),
             (small, "EAGLE", head, _greedy_prompts()),
             (deepseek_with_mtp, "NEXTN", None, repetitive_requests(3)[:5])]
    for (_, _, draft, _), spec in zip(cases, cuda_spec_equals_plain(cases, backend)):
        if draft == head:
            assert spec.stats.spec.accept_tokens > 0


def cuda_spec_equals_plain(cases, backend, **spec_flags):
    """For each (model, algorithm, draft, requests): the server's CUDA scheduler with and
    without speculation (float32, both under the overlap scheduler) gives the same greedy
    results and frees its pool; returns the speculative schedulers."""
    from rollserve.core.tokenizer import eos_token_ids, load_tokenizer
    from rollserve.executor.model_runner import ModelRunner
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.scheduler.overlap_scheduler import make_scheduler as make_for_config

    specs = []
    for path, algorithm, draft, msgs in cases:
        results = []
        for spec in (None, algorithm):
            args = ServerArgs(model_path=path, device="cuda", dtype="float32",
                              max_total_tokens=4096, attention_backend=backend,
                              speculative_algorithm=spec,
                              speculative_draft_model_path=draft if spec else None,
                              **(spec_flags if spec else {}))
            config = args.scheduler_config()
            tokenizer = load_tokenizer(path)
            scheduler = make_for_config(config, ModelRunner(config.executor), tokenizer,
                                        eos_token_ids(path, tokenizer))
            results.append(run_all(scheduler, [dataclasses.replace(m) for m in msgs]))
        assert scheduler.overlapped_steps > 0  # scheduler/overlap_speculative.py's steps ran
        assert_pool_free(scheduler)
        specs.append(scheduler)
        assert strip(results[1]) == strip(results[0]), (algorithm, path)
    return specs
