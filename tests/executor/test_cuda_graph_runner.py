"""The decode graph runner with a draft model, in its eager mode on CPU (the same forward over
the same static buffers a CUDA graph replays): it returns the hidden states the draft reads
beside the logits, so EAGLE and EAGLE3 steps go through the graph runners (decode, verify and
the draft's chain steps) and give the eager path's tokens and logprobs."""

import pytest

from tests.executor.test_verify_graph_runner import assert_same_results, spec_scheduler
from tests.scheduler.conftest import heads  # noqa: F401 (the draft-head fixture)
from tests.scheduler.scheduler_harness import request, run_all
from tests.scheduler.test_speculative import assert_pool_free, repetitive_requests


def _requests():
    msgs = repetitive_requests(1)[:3]
    # a batch of plain greedy requests: the drafts' chains meet the verify graphs' padding
    return msgs + [request([7 + k, 11, 13, 17 + k], rid=f"g{k}", temperature=0,
                           max_new_tokens=10, ignore_eos=True, return_logprob=True)
                   for k in range(3)]


@pytest.mark.parametrize("algorithm", ["EAGLE", "EAGLE3"])
def test_draft_model_steps_replay_graphs_with_the_eager_results(tiny_models, heads,  # noqa: F811
                                                                 algorithm):
    path, head = tiny_models["llama"], heads[algorithm.lower()]
    want = run_all(spec_scheduler(path, False, algorithm, head, cuda_graph_bs=[1, 2, 4, 8]),
                   _requests())
    spec = spec_scheduler(path, True, algorithm, head, cuda_graph_bs=[1, 2, 4, 8])
    runner = spec.runner
    got = run_all(spec, _requests())
    assert_same_results(got, want)
    assert runner.graph_runner.hidden_capture is runner.hidden_capture is not None
    assert runner.graph_runner.replays > 0 and runner.verify_graph_runner.replays > 0
    assert spec.drafter.draft.chain_graphs.replays > 0  # the chains' draft steps (their runner)
    assert spec.stats.spec.draft_tokens > 0
    assert_pool_free(spec)
