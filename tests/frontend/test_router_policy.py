import pytest

from rollserve.frontend.router import combine
from rollserve.frontend.router_policy import CacheAware, make_policy, request_text

WORKERS = ["http://a", "http://b", "http://c"]


def test_round_robin_takes_turns():
    policy = make_policy("round_robin")
    assert [policy.pick(WORKERS, {}, "x") for _ in range(4)] == WORKERS + WORKERS[:1]


def test_shortest_queue_takes_the_least_loaded():
    policy = make_policy("shortest_queue")
    assert policy.pick(WORKERS, {"http://a": 3, "http://b": 1, "http://c": 2}, "x") == "http://b"


def test_cache_aware_keeps_a_shared_prefix_on_one_worker_and_spreads_new_ones():
    policy = CacheAware()
    group_prompt = "You are a helpful assistant. Solve: 17 * 23 = ?"
    first = policy.pick(WORKERS, {}, group_prompt)
    # a GRPO group: the same prompt n times, and a follow-up turn of the conversation
    assert all(policy.pick(WORKERS, {}, group_prompt) == first for _ in range(7))
    assert policy.pick(WORKERS, {}, group_prompt + " Answer: 391. Now 18 * 23?") == first
    others = {policy.pick(WORKERS, {}, text) for text in ("Translate to French: cat",
                                                          "Write a haiku about rain")}
    assert first not in others and len(others) == 2  # new text goes where least is cached
    assert policy.stats()["cache_hits"] == 8 and policy.stats()["routed"] == 11


def test_cache_aware_balances_when_load_is_skewed():
    policy = CacheAware(balance_abs_threshold=4)
    prompt = "the same long prefix " * 5
    first = policy.pick(WORKERS, {}, prompt)
    busy = {w: (10 if w == first else 0) for w in WORKERS}
    assert policy.pick(WORKERS, busy, prompt) != first


def test_a_forgotten_worker_loses_its_tree():
    policy = CacheAware()
    first = policy.pick(WORKERS, {}, "prefix to remember")
    policy.forget(first)
    assert first not in policy.trees


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="round_robin, shortest_queue, cache_aware"):
        make_policy("fastest")


def test_request_text_reads_prompts_messages_and_ids():
    assert request_text("/generate", {"text": "hi"}) == "hi"
    assert request_text("/generate", {"text": ["first", "second"]}) == "first"
    assert request_text("/generate", {"input_ids": [[1, 2], [3]]}) == "1 2"
    assert request_text("/v1/completions", {"prompt": "p"}) == "p"
    assert request_text("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "q"}]}) == "user:q\n"
    assert request_text("/generate", None) == ""


def test_combined_answer_names_the_failing_workers():
    ok = (200, {"success": True, "message": "updated"})
    bad = (400, {"success": False, "message": "refused: shape"})
    status, answer = combine({"http://a": ok, "http://b": ok})
    assert status == 200 and answer["success"] and set(answer["workers"]) == {"http://a", "http://b"}
    status, answer = combine({"http://a": ok, "http://b": bad})
    assert status == 400 and answer["success"] is False
    assert "http://b: refused: shape" in answer["message"] and "succeeded: http://a" in answer["message"]
