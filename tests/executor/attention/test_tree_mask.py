"""Tree attention (speculative tree drafts): one forward over [last token, tree nodes] with the
tree mask over the paged KV cache gives, row for row, the logits of running each root-to-leaf
path as its own token sequence (the dense reference). Backends without a custom-mask kernel
hand tree forwards to the torch reference; triton runs them itself (its kernel's tests:
tests/kernels/test_tree_attention_triton.py). With TRITON_INTERPRET=1 (and triton importable)
the engine test below runs the Triton backend, tree kernel included, in the interpreter."""

from types import SimpleNamespace

import pytest
import torch

from rollserve.core.batch import BatchEntry, ScheduleBatch
from rollserve.core.draft_tree import ancestor_mask, children, depths, path_rows
from rollserve.executor.attention.batch_invariant import BatchInvariantBackend
from rollserve.executor.attention.registry import tree_mask_backend
from rollserve.executor.attention.tree_mask import dense_tree_mask, flat_custom_mask
from rollserve.executor.attention.torch_native import TorchNativeBackend
from rollserve.kernels.dispatch import triton_available
from tests.scheduler.scheduler_harness import make_scheduler

# rows [root, nodes...]: root -> 1, 2, 3; 1 -> 4, 5; 2 -> 6; 4 -> 7
PARENTS = [-1, 0, 0, 0, 1, 1, 2, 4]
TOKENS = [11, 40, 41, 42, 50, 51, 60, 70]


def _forward(runner, kv, row, start, tokens, parents=None):
    slots = kv.alloc_slots(len(tokens))
    runner.req_pool.write(row, start, slots)
    entry = BatchEntry(SimpleNamespace(req_pool_idx=row), start, list(tokens), slots, sample=True,
                       logit_rows=list(range(len(tokens))), tree_parents=parents)
    return runner.forward(ScheduleBatch([entry])).logits


def test_draft_tree_helpers():
    assert depths(PARENTS) == [0, 1, 1, 1, 2, 2, 2, 3]
    mask = ancestor_mask(PARENTS)
    assert mask[7].nonzero().flatten().tolist() == [0, 1, 4, 7]
    assert mask[6].nonzero().flatten().tolist() == [0, 2, 6]
    assert children(PARENTS)[1] == [4, 5]
    assert path_rows(PARENTS, TOKENS, [40, 50, 70]) == [0, 1, 4, 7]


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_tree_forward_equals_each_path_run_alone(tiny_models, model):
    scheduler = make_scheduler(tiny_models[model])
    runner, kv = scheduler.runner, scheduler.kv
    prompt = [5, 9, 17, 23, 8, 31, 44]
    tree_row, path_row = runner.req_pool.alloc(), runner.req_pool.alloc()
    with torch.inference_mode():
        _forward(runner, kv, tree_row, 0, prompt[:-1])
        tree = _forward(runner, kv, tree_row, len(prompt) - 1, [prompt[-1]] + TOKENS[1:], PARENTS)
        kids = children(PARENTS)
        for leaf in (r for r in range(len(PARENTS)) if not kids[r]):
            path = [leaf]
            while PARENTS[path[-1]] >= 0:
                path.append(PARENTS[path[-1]])
            path = path[::-1]  # root .. leaf
            dense = _forward(runner, kv, path_row, 0, prompt + [TOKENS[r] for r in path[1:]])
            # the dense run's rows for the path's tokens: the prompt's last token onwards
            torch.testing.assert_close(tree[path], dense[len(prompt) - 1:], rtol=1e-4, atol=1e-4)
        # the same rows as a chain (causal mask, positions by row) are not the tree's
        chain = _forward(runner, kv, path_row, len(prompt) - 1, [prompt[-1]] + TOKENS[1:])
        assert not torch.allclose(chain[2], tree[2], atol=1e-3)


def test_backends_without_a_mask_kernel_hand_trees_to_the_torch_reference():
    torch_native = TorchNativeBackend("cpu", 2)
    assert tree_mask_backend(torch_native) is torch_native
    other = BatchInvariantBackend("cpu", 2)
    fallback = tree_mask_backend(other)
    assert isinstance(fallback, TorchNativeBackend) and tree_mask_backend(other) is fallback


@pytest.mark.skipif(not triton_available(), reason="needs triton and CUDA (or TRITON_INTERPRET=1)")
def test_triton_runs_trees_itself():
    from rollserve.executor.attention.triton import TritonBackend

    backend = TritonBackend("cuda" if torch.cuda.is_available() else "cpu", 2)
    assert tree_mask_backend(backend) is backend


def test_flat_custom_mask_is_every_requests_dense_mask():
    """flashinfer's custom_mask: the tree requests' dense masks, causal rows for the others."""
    tree = ancestor_mask(PARENTS)  # 8 rows
    ctx = SimpleNamespace(tree_masks=[tree[5:], None, tree], prefix_lens_cpu=[10, 4, 3],
                          extend_lens_cpu=[3, 2, 8],
                          positions=torch.tensor([9, 9, 10, 4, 5] + [3 + d for d in depths(PARENTS)]))
    for window in (None, 2):
        flat = flat_custom_mask(ctx, window)
        assert flat.numel() == 3 * 13 + 2 * 6 + 8 * 11
        first = flat[:39].view(3, 13)
        assert torch.equal(first, dense_tree_mask(ctx, 0, 0, window))
        assert first[:, 5:].equal(tree[5:]) and (window is not None or first[:, :5].all())
        causal = flat[39:51].view(2, 6)
        want = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
        if window == 2:
            want = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
        assert torch.equal(causal, want)
        assert torch.equal(flat[51:].view(8, 11), dense_tree_mask(ctx, 2, 5, window))
