"""The draft model's chain-step graph runner, in its eager mode on CPU (the same step over the
same static buffers a CUDA graph replays): a padded batch gives the eager draft step's ids and
carried states (whole EAGLE runs through it: test_cuda_graph_runner.py)."""

import pytest
import torch

from tests.executor.test_verify_graph_runner import spec_scheduler
from tests.scheduler.conftest import heads  # noqa: F401 (the draft-head fixture)
from tests.scheduler.scheduler_harness import request


@pytest.mark.parametrize("algorithm", ["EAGLE", "EAGLE3"])
def test_a_padded_chain_step_equals_the_eager_draft_step(tiny_models, heads, algorithm):  # noqa: F811
    spec = spec_scheduler(tiny_models["llama"], True, algorithm, heads[algorithm.lower()],
                          cuda_graph_bs=[1, 4])
    for k in range(3):
        spec.add_request(request([5 + k, 9, 12, 40 + k, 7], rid=f"c{k}", temperature=0,
                                 max_new_tokens=30, ignore_eos=True))
    for _ in range(3):
        spec.step()
    reqs = list(spec.running)
    assert len(reqs) == 3
    draft = spec.drafter.draft
    rows = [r.req_pool_idx for r in reqs]
    positions = [r.seq_len - 1 for r in reqs]
    slots = [draft.scratch_slot(row, 0) for row in rows]
    spec.runner.req_pool.write_each(rows, positions, torch.tensor(slots))
    width = draft.model.embed(torch.tensor([1])).shape[-1]  # the draft's hidden width
    carried = torch.randn(3, width, generator=torch.Generator().manual_seed(0))
    tokens = [11, 22, 33]
    eager_states, eager_carried = draft.forward(rows, positions, [[t] for t in tokens],
                                                torch.tensor(slots), carried)
    before = draft.chain_graphs.replays  # the chains drafted so far went through it too
    ids, got_carried = draft.chain_step(rows, positions, tokens, slots, carried)  # padded to 4
    assert draft.chain_graphs.replays == before + 1
    assert ids == draft.draft_ids(eager_states)
    torch.testing.assert_close(got_carried, eager_carried, rtol=1e-5, atol=1e-5)

    # the target's graphs dropped (a memory release), then captured again (the resume): the
    # step runs eager meanwhile, and gets step graphs built beside the new target graphs after
    first = draft.chain_graphs
    spec.runner.drop_cuda_graphs()
    assert draft.chain_step(rows, positions, tokens, slots, carried)[0] == ids
    assert draft.chain_graphs is None
    spec.runner.capture_cuda_graphs()
    assert draft.chain_step(rows, positions, tokens, slots, carried)[0] == ids
    assert draft.chain_graphs is not None and draft.chain_graphs is not first
