"""Tree drafts (--speculative-eagle-topk > 1) from draft models: greedy results equal the plain
scheduler's, with topk 2 and 4, for EAGLE, EAGLE3 and NEXTN (MLA attention); a trained head gets
tree drafts accepted; sampling at temperature 1 keeps the target's distribution; the KV pool is
fully free when idle (rejected nodes' slots all freed); trees are connected and ranked."""

import dataclasses
import random

import pytest
import torch

from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_model_drafter import (_greedy_prompts, assert_first_pairs_follow_target,
                                                cuda_spec_equals_plain, make_spec)
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests, strip


def make_tree(model_path, algorithm, draft, topk, num_steps, num_draft_tokens, **overrides):
    spec = make_spec(model_path, algorithm, draft, num_draft_tokens, **overrides)
    config = dataclasses.replace(spec.config, speculative_eagle_topk=topk,
                                 speculative_num_steps=num_steps)
    return type(spec)(config, spec.runner, spec.stop_checker.tokenizer, spec.eos_token_ids)


@pytest.mark.parametrize("topk,steps,tokens,overrides", [
    (2, 3, 6, {}), (4, 2, 8, {}),
    # a pool so small that trees are cut to the room left (and prefill is chunked)
    (4, 3, 10, {"chunked_prefill_size": 16, "max_total_tokens": 120})])
def test_eagle_trees_greedy_equal_plain_scheduler(tiny_models, heads, topk, steps, tokens,
                                                  overrides):
    msgs = lambda: repetitive_requests(1)[:6]  # noqa: E731
    plain = run_all(make_scheduler(tiny_models["llama"], **overrides), msgs(),
                    arrivals={4: repetitive_requests(2)[:3]})
    spec = make_tree(tiny_models["llama"], "EAGLE", heads["eagle"], topk, steps, tokens,
                     **overrides)
    got = run_all(spec, msgs(), arrivals={4: repetitive_requests(2)[:3]})
    assert strip(got) == strip(plain)
    assert spec.stats.spec.verify_ct > 0 and spec.stats.spec.draft_tokens > 0
    assert_pool_free(spec)


def test_trained_head_trees_accept_and_are_connected(trained, monkeypatch):
    """A trained EAGLE head's trees get drafts accepted (more per step than one chain of the
    same depth would need to be wrong about); every proposed tree is rooted and ranked."""
    import rollserve.scheduler.speculative as speculative

    small, head = trained
    seen = []
    real = speculative.BatchEntry

    def spy(*args, **kwargs):
        if kwargs.get("tree_parents") is not None:
            seen.append(kwargs["tree_parents"])
        return real(*args, **kwargs)

    monkeypatch.setattr(speculative, "BatchEntry", spy)
    plain = run_all(make_scheduler(small), _greedy_prompts())
    spec = make_tree(small, "EAGLE", head, 3, 3, 8)
    got = run_all(spec, _greedy_prompts())
    assert strip(got) == strip(plain)
    stats = spec.stats.spec
    assert (stats.accept_tokens + stats.verify_ct) / stats.verify_ct > 1.0
    assert seen and max(map(len, seen)) == 8  # root + 7 nodes
    for parents in seen:
        assert parents[0] == -1 and all(0 <= p < i for i, p in enumerate(parents) if i)
    assert_pool_free(spec)


def test_eagle3_and_nextn_trees_greedy_equal_plain_scheduler(tiny_models, heads, deepseek_with_mtp):
    """EAGLE3's own draft vocabulary; NEXTN's MLA attention applies the tree mask itself."""
    for path, algorithm, draft, msgs in [
            (tiny_models["llama"], "EAGLE3", heads["eagle3"], lambda: repetitive_requests(1)[:4]),
            (deepseek_with_mtp, "NEXTN", None, lambda: repetitive_requests(3)[:4])]:
        plain = run_all(make_scheduler(path), msgs())
        spec = make_tree(path, algorithm, draft, 2, 2, 4)
        got = run_all(spec, msgs())
        assert strip(got) == strip(plain), algorithm
        assert spec.stats.spec.draft_tokens > 0
        assert_pool_free(spec)


def test_temperature_one_trees_keep_the_target_distribution(trained):
    """The first two sampled tokens over many requests (top_k 3; the second one verified
    against a tree of two first-token candidates) against the target's own probabilities."""
    prompt = [random.Random(7).randrange(3, 500) for _ in range(6)]
    small, head = trained
    spec = make_tree(small, "EAGLE", head, 2, 2, 5)
    n = 600
    msgs = [request(prompt, rid=f"d{i}", temperature=1.0, top_k=3, max_new_tokens=3,
                    ignore_eos=True) for i in range(n)]
    got = run_all(spec, msgs)
    assert spec.stats.spec.accept_tokens > 0
    assert_pool_free(spec)
    assert_first_pairs_follow_target(small, prompt, got, n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["triton", "torch_native"])
def test_cuda_trees_greedy_equal_overlap_scheduler_with_graphs(tiny_models, heads, trained,
                                                               deepseek_with_mtp, backend):
    """On CUDA the plain run is the server's (overlap, decode CUDA graphs); tree forwards run
    the backend's tree path (triton: its tree kernel; NEXTN's MLA: the torch MLA backend).
    float32: no argmax is a rounding tie."""
    small, head = trained
    cases = [(tiny_models["llama"], "EAGLE", heads["eagle"], repetitive_requests(1)),
             (small, "EAGLE", head, _greedy_prompts()),
             (deepseek_with_mtp, "NEXTN", None, repetitive_requests(3)[:5])]
    cuda_spec_equals_plain(cases, backend, speculative_eagle_topk=4, speculative_num_steps=3,
                           speculative_num_draft_tokens=8)
