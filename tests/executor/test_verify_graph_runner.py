"""The verify graph runner's staging, padding and row selection, in its eager mode on CPU (the
same forward over the same static buffers a CUDA graph replays): speculative NGRAM chains give
the eager verify path's tokens, finish reasons and logprobs, with batches padded to captured
sizes and chains padded to num_draft_tokens rows; what cannot be graphed stays eager."""

import dataclasses

import pytest

from rollserve.executor.verify_graph_runner import DEFAULT_VERIFY_MAX_BS, verify_sizes
from rollserve.scheduler.speculative import SpeculativeScheduler
from tests.scheduler.scheduler_harness import make_scheduler, run_all
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests


def spec_scheduler(model_path, graphs: bool, algorithm="NGRAM", draft=None, num_draft_tokens=4,
                   breadth=1, **overrides) -> SpeculativeScheduler:
    """A speculative scheduler; graphs=True runs the decode and verify graph runners in their
    eager mode (set before the drafter, so a draft model's states are captured by them)."""
    plain = make_scheduler(model_path, **overrides)
    if graphs:
        plain.runner.capture_cuda_graphs(eager=True)
    config = dataclasses.replace(plain.config, speculative_algorithm=algorithm,
                                 speculative_num_draft_tokens=num_draft_tokens,
                                 speculative_draft_model_path=draft,
                                 speculative_ngram_max_bfs_breadth=breadth)
    return SpeculativeScheduler(config, plain.runner, plain.stop_checker.tokenizer,
                                plain.eos_token_ids)


def assert_same_results(got, want, tol=1e-4):
    """Same tokens and finish reasons; logprobs (and top logprobs) within tol."""
    assert got.keys() == want.keys()
    for rid, w in want.items():
        g = got[rid]
        assert (g.output_ids, g.finished_reason) == (w.output_ids, w.finished_reason), rid
        assert len(g.output_logprobs) == len(w.output_logprobs)
        for (gv, gt), (wv, wt) in zip(g.output_logprobs, w.output_logprobs):
            assert gt == wt and (gv is None) == (wv is None)
            assert gv is None or abs(gv - wv) < tol
        for gtop, wtop in zip(g.output_top, w.output_top):
            assert [t for _, t in gtop] == [t for _, t in wtop]
            assert all(abs(a - b) < tol for (a, _), (b, _) in zip(gtop, wtop))


def test_verify_sizes_honour_the_graph_flags():
    assert verify_sizes(None, None, 1024)[-1] == DEFAULT_VERIFY_MAX_BS
    assert verify_sizes(16, None, 1024) == [1, 2, 4, 8, 16]
    assert verify_sizes(None, [3, 5, 64], 1024) == [3, 5, 64]
    assert verify_sizes(None, [3, 5, 64], 4) == [3]  # none above max_running_requests


@pytest.mark.parametrize("overrides", [
    {"cuda_graph_bs": [1, 4, 16]},  # batches padded up to 4 and 16 requests
    {"cuda_graph_max_bs": 2, "chunked_prefill_size": 16, "max_total_tokens": 200},
])
def test_ngram_chain_graphs_equal_the_eager_verify(tiny_models, overrides):
    msgs = lambda: repetitive_requests(3)  # noqa: E731
    want = run_all(spec_scheduler(tiny_models["llama"], False, **overrides), msgs())
    spec = spec_scheduler(tiny_models["llama"], True, **overrides)
    runner = spec.runner
    assert runner.verify_graph_runner is not None and runner.verify_graph_runner.eager
    got = run_all(spec, msgs())
    assert_same_results(got, want)
    assert runner.verify_graph_runner.replays > 0  # verify steps went through the graph runner
    assert runner.graph_runner.replays > 0  # and steps without drafts through the decode one
    assert spec.stats.spec.accept_tokens > 0
    assert_pool_free(spec)


def test_uncapturable_cases_run_eager(tiny_models):
    """--disable-cuda-graph: no runner at all; NGRAM trees: decode graphs, no verify graphs
    (their tree mask changes every step); a batch above the captured sizes: eager verify."""
    off = spec_scheduler(tiny_models["llama"], True, disable_cuda_graph=True)
    assert off.runner.graph_runner is None and off.runner.verify_graph_runner is None
    trees = spec_scheduler(tiny_models["llama"], True, breadth=3)
    assert trees.runner.graph_runner is not None and trees.runner.verify_graph_runner is None
    small = spec_scheduler(tiny_models["llama"], True, cuda_graph_bs=[1])
    want = run_all(spec_scheduler(tiny_models["llama"], False), repetitive_requests(4)[:4])
    assert_same_results(run_all(small, repetitive_requests(4)[:4]), want)
