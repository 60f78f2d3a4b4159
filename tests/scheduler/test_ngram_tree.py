"""NGRAM tree drafts (--speculative-ngram-max-bfs-breadth > 1): the trie of earlier
continuations on hand-made sequences (exact nodes, merging, caps, BFS and PROB order);
greedy results equal the plain scheduler's (the default model's: tests/rollout/
test_speculative_engine.py, where NGRAM drafts trees by default); sampling at temperature 1
keeps the target's distribution; the pool is fully free when idle; trees accept more than the
chain where several continuations exist."""

import dataclasses

from rollserve.core.draft_tree import DraftTree
from rollserve.executor.spec_tree import tree_accept_greedy
from rollserve.scheduler.ngram_drafter import NgramIndex
from rollserve.scheduler.ngram_tree import NgramTreeDrafter, TokenPlaces, anchors, build_tree
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_model_drafter import assert_first_pairs_follow_target
from tests.scheduler.test_speculative import (assert_pool_free, make_spec, repetitive_requests,
                                              strip)

# "1 2" was followed by 3 (twice: at 1 and 7) and 4 (at 4); "2" alone also by 6 (at 11)
SEQ = [1, 2, 3, 1, 2, 4, 1, 2, 3, 5, 9, 2, 6, 1, 2]


def tree_of(seq, cap, depth=18, low=1, high=10, match_type="BFS", windows=(1, None)):
    places = TokenPlaces()
    places.extend(seq)
    return build_tree(seq, places.latest(seq[-1]), cap, depth, low, high, match_type, windows)


def test_anchors_are_the_matches_longest_first():
    places = TokenPlaces()
    places.extend(SEQ)
    assert places.latest(2) == [11, 7, 4, 1]  # the end (14) never matches itself
    assert anchors(SEQ, places.latest(2), 18) == [(2, [7, 4, 1]), (1, [11, 7, 4, 1])]
    assert anchors(SEQ, places.latest(2), 2) == [(1, [11, 7, 4, 1])]  # depth 2: 1-token matches


def test_match_windows_bound_the_anchors():
    """Older SGLang's --speculative-ngram-min/max-match-window-size: the lengths compared."""
    places = TokenPlaces()
    places.extend(SEQ)
    assert anchors(SEQ, places.latest(2), 18, 2) == [(2, [7, 4, 1])]
    assert anchors(SEQ, places.latest(2), 18, 1, 1) == [(1, [11, 7, 4, 1])]
    # only 1-token matches: 6 (after the 2 at 11) is the latest continuation, first
    assert tree_of(SEQ, 3, windows=(1, 1))[0] == [6, 3, 4]
    chain = NgramIndex(max_window=6, min_window=3)
    chain.extend(SEQ)
    assert chain.propose(SEQ, 2) == []  # its best match ("1 2") is 2 tokens long


def test_bfs_trie_merges_continuations_latest_first_up_to_the_cap():
    # the 2-token anchor "1 2": 3 (latest at 7, again at 1) then 4; under 3: 5 (after 7), 1
    tokens, parents = tree_of(SEQ, 10)
    assert tokens == [3, 4, 5, 1, 1, 9, 2, 2, 2, 4]
    assert parents == [-1, -1, 0, 0, 1, 2, 3, 4, 5, 6]
    for cap in (1, 2, 3, 6):  # a smaller cap keeps the first nodes: breadth-first order
        assert tree_of(SEQ, cap) == (tokens[:cap], parents[:cap])
    # breadth 1 at every node: the first anchor's latest chain (3 5 9 2 6 1 ...)
    assert tree_of(SEQ, 6, low=1, high=1) == ([3, 5, 9, 2, 6, 1], list(range(-1, 5)))
    # ... cut at depth 4 (2 matched + 2), then the 1-token anchor's latest chain (6 1 2,
    # after the 2 at 11) branches off the root
    assert tree_of(SEQ, 6, depth=4, low=1, high=1) == ([3, 5, 6, 1, 2], [-1, 0, -1, 2, 3])


def test_trie_depth_bounds_matches_plus_continuations():
    # depth 3: the 2-token anchor may add one token (3; breadth 1 there), the 1-token anchor
    # two: 6 1, 3 (merged) 5, 4 1 -- continuations from every earlier "2"
    assert tree_of(SEQ, 10, depth=3) == ([3, 6, 4, 1, 5, 1], [-1, -1, -1, 1, 0, 2])


def test_prob_takes_the_most_frequent_continuation_first():
    seq = [7, 1, 7, 1, 7, 2, 7]  # after 7: 1 twice, 2 once (latest)
    assert tree_of(seq, 1, match_type="BFS")[0] == [2]
    assert tree_of(seq, 1, match_type="PROB")[0] == [1]
    # 1 weighs 2/3 and so does the 7 after it (both places went on with 7): before 2 (1/3);
    # then 2 and the nodes under 7 weigh 1/3 each, and 2 waited longest
    assert tree_of(seq, 3, match_type="PROB") == ([1, 7, 2], [-1, 0, -1])


class _Req:
    def __init__(self, tokens):
        self.fill_ids, self.seq_len, self.spec_state = list(tokens), len(tokens), None


def test_drafter_proposes_trees_chains_and_nothing():
    drafter = NgramTreeDrafter(num_drafts=5, max_trie_depth=18, min_breadth=1, max_breadth=10,
                               match_type="BFS")
    req = _Req(SEQ)
    tree = drafter.propose(req, 99)
    assert isinstance(tree, DraftTree) and tree.tokens == [3, 4, 5, 1, 1]
    assert tree.parents == [-1, -1, 0, 0, 1] and tree.seq_len == len(SEQ)
    assert drafter.propose(req, 1) == [3]  # one node: a chain, verified without a tree mask
    assert drafter.propose(_Req([5, 6, 7]), 4) == []  # 7 never seen before
    req.fill_ids = [4, 8, 4]  # a rewritten sequence: its index starts over
    assert drafter.propose(req, 3) == [8, 4]  # one earlier place: a chain
    assert req.spec_state.length == 3


def test_tree_accepts_what_the_chain_misses():
    """Where the latest continuation is not the one that holds, the chain's one proposal is
    rejected and the tree still holds the right path: accept length tree > chain."""
    seq = [1, 2, 3, 4, 5, 8, 1, 2, 3, 4, 6, 9, 7, 3, 4]  # "3 4" went on 5 8 and 6 9
    truth = [5, 8, 1]  # this time it goes on as the first time did
    chain = NgramIndex(max_window=6)
    chain.extend(seq)
    chain_drafts = chain.propose(seq, 3)
    tokens, parents = tree_of(seq, 6)
    assert chain_drafts == [6, 9, 7]
    accepted = lambda drafts, parents: len(tree_accept_greedy(  # noqa: E731
        _argmax_rows(seq, drafts, parents, truth), [-1] + [p + 1 for p in parents],
        [0] + drafts)[0]) - 1
    assert accepted(chain_drafts, list(range(-1, 2))) == 0
    assert accepted(tokens, parents) == 3


def _argmax_rows(seq, drafts, parents, truth):
    """The target's argmax at each verify row when the continuation is `truth`: a row on the
    truth's path predicts its next token; any other row predicts something else (0)."""
    rows = [-1] + [p + 1 for p in parents]
    out = []
    for r in range(len(rows)):
        path, node = [], r
        while node > 0:
            path.append(drafts[node - 1])
            node = rows[node]
        path.reverse()
        out.append(truth[len(path)] if path == truth[:len(path)] and len(path) < len(truth) else 0)
    return out


def make_ngram(model_path, breadth, num_draft_tokens=6, match_type="BFS", **overrides):
    spec = make_spec(model_path, num_draft_tokens, **overrides)
    config = dataclasses.replace(spec.config, speculative_ngram_max_bfs_breadth=breadth,
                                 speculative_ngram_match_type=match_type)
    return type(spec)(config, spec.runner, spec.stop_checker.tokenizer, spec.eos_token_ids)


def test_trees_greedy_equal_plain_scheduler_and_accept_more_than_the_chain(tiny_models,
                                                                          monkeypatch):
    """A pool so small that trees are cut to the room left, prefill chunked and requests
    retracted; requests arriving mid-run. On these repetitive prompts the trees' extra
    branches hold where the chain's one continuation does not: more tokens accepted, in
    fewer verify steps, for the same output."""
    import rollserve.scheduler.speculative as speculative

    seen, real = [], speculative.BatchEntry
    monkeypatch.setattr(speculative, "BatchEntry",
                        lambda *a, **kw: seen.append(kw.get("tree_parents")) or real(*a, **kw))
    overrides = {"chunked_prefill_size": 16, "max_total_tokens": 120}
    msgs = lambda: repetitive_requests(1)[:6]  # noqa: E731
    arrivals = lambda: {4: repetitive_requests(2)[:3]}  # noqa: E731
    plain = strip(run_all(make_scheduler(tiny_models["llama"], **overrides), msgs(),
                          arrivals=arrivals()))
    stats = {}
    for breadth in (1, 4):
        spec = make_ngram(tiny_models["llama"], breadth, **overrides)
        assert strip(run_all(spec, msgs(), arrivals=arrivals())) == plain
        stats[breadth] = spec.stats.spec
        assert_pool_free(spec)
    trees = [p for p in seen if p is not None]
    assert trees and any(len(set(p)) < len(p) for p in trees)  # some node has two children
    assert all(p[0] == -1 and all(0 <= q < i for i, q in enumerate(p) if i) for p in trees)
    assert stats[4].accept_tokens > stats[1].accept_tokens > 0
    assert stats[4].verify_ct < stats[1].verify_ct


def test_temperature_one_trees_keep_the_target_distribution(tiny_models):
    """The first two sampled tokens over many requests against the target's own
    probabilities. A logit bias keeps sampling to three tokens x, y, z; the prompt holds
    every pair of them, so the second token is verified against a tree of two of the three
    (PROB), accepted or rejected down to the residual."""
    model = tiny_models["llama"]
    support = [101, 202, 303]
    x, y, z = support
    prompt = [17, 45, 99, 120] + [x, x, y, y, z, z, x, z, y, x, y, z]
    spec = make_ngram(model, 10, num_draft_tokens=3, match_type="PROB")
    n = 200
    # max_new_tokens 4: the step after the first token verifies a tree of 2 nodes
    msgs = [request(prompt, rid=f"d{i}", temperature=1.0, max_new_tokens=4, ignore_eos=True,
                    logit_bias={t: 60 for t in support}) for i in range(n)]
    got = run_all(spec, msgs)
    assert 0 < spec.stats.spec.accept_tokens < spec.stats.spec.draft_tokens  # both paths ran
    assert_pool_free(spec)
    assert_first_pairs_follow_target(model, prompt, got, n, support=support)
