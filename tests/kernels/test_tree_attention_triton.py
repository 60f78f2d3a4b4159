"""The tree-masked extend kernel (kernels/tree_attention_triton.py), through the Triton backend,
against the torch reference (attention_torch over a float32 copy of the pool) on random
trees: several requests with different prefixes, verify trees (M = E) and draft tree steps
(M > E: earlier nodes already in the pool), requests without a tree in the same batch, GQA
ratios, sliding windows, split counts. GPU; also in Triton's interpreter on CPU tensors when
TRITON_INTERPRET=1 (small cases only there).

Errors are ||out - ref|| / ||ref||; every output element is checked written (no NaN).
"""

import os
import random

import pytest
import torch

pytestmark = pytest.mark.gpu
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
if not (torch.cuda.is_available() or INTERPRET):
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from rollserve.executor.attention.triton import (attention_triton, build_metadata,  # noqa: E402
                                                 store_kv_triton)
from rollserve.kernels.tree_attention_triton import (MAX_SPLITS, pack_tree_masks,  # noqa: E402
                                                     tree_attention_triton, tree_block_m,
                                                     tree_num_splits, tree_row_blocks)
from tests.kernels.checks import rel_err  # noqa: E402
from tests.kernels.pool_contexts import (DEV, PoolContexts, fill_pool, run_both,  # noqa: E402
                                         tree_batch)

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
BIG = not INTERPRET  # real sizes only where they run fast
# the interpreter's tl.dot multiplies bfloat16's raw bits: half precision is float16 there
HALF = torch.float16 if INTERPRET else torch.bfloat16


# (prefix, E, M or None): verify trees (M = E, the root + nodes), draft steps (M > E), a
# request without a tree (causal extend), a lone token of a tree step, and a decode row
SMALL = [(37, 8, 8), (5, 4, 9), (70, 1, 6), (12, 3, None), (20, 1, None), (0, 6, 6)]
LARGE = [(1500, 8, 8), (700, 16, 16), (3000, 4, 12), (64, 1, 5), (300, 40, None), (9, 1, None)]


@pytest.mark.parametrize("q_heads,kv_heads,head_dim", [(4, 4, 16), (8, 2, 32), (6, 2, 16)]
                         + ([(32, 8, 128), (28, 4, 128), (16, 16, 64)] if BIG else []))
@pytest.mark.parametrize("dtype", [torch.float32, HALF], ids=["fp32", "half"])
def test_tree_batch_matches_reference(q_heads, kv_heads, head_dim, dtype):
    rng = random.Random(q_heads * 131 + head_dim)
    contexts = PoolContexts(kv_heads, head_dim, dtype, num_slots=20000 if BIG else 600,
                            max_context=4000 if BIG else 200, rows=8)
    fill_pool(contexts, dtype)
    ctx = tree_batch(contexts, LARGE if BIG else SMALL, rng)
    out, ref = run_both(attention_triton, contexts, ctx, q_heads)
    assert ctx.attn_metadata.tree is not None  # the tree kernel ran, not the plain extend
    assert rel_err(out, ref) < TOL[dtype] * (1 if dtype == torch.float32 else 2)


@pytest.mark.parametrize("window", [1, 4, 30])
def test_tree_sliding_window(window):
    """The window counts from each node's position (committed + depth); tree keys follow the
    mask alone."""
    contexts = PoolContexts(2, 16, torch.float32, num_slots=600, max_context=200, rows=8)
    fill_pool(contexts, torch.float32)
    ctx = tree_batch(contexts, [(40, 6, 6), (25, 2, 7), (9, 5, None)], random.Random(window))
    out, ref = run_both(attention_triton, contexts, ctx, 4, window=window)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("splits", [1, 2, 3, 5])
def test_split_counts_agree(splits):
    """Every split count gives the reference, splits past the keys (empty ranges) included."""
    q_heads, kv_heads, head_dim = 4, 2, 16
    contexts = PoolContexts(kv_heads, head_dim, torch.float32, num_slots=600, max_context=200,
                            rows=8)
    fill_pool(contexts, torch.float32)
    ctx = tree_batch(contexts, [(90, 5, 5), (3, 2, 4), (30, 2, None)], random.Random(splits))

    def with_splits(q, k, v, ctx, layer_id, scaling, window, causal):
        q = store_kv_triton(q, k, v, ctx, layer_id)
        k_cache, v_cache = ctx.kv_pool.kv(layer_id)
        tree = build_metadata(ctx, kv_heads, q.device).tree
        block_req, block_start, block_m, _ = tree.plan(q_heads // kv_heads, kv_heads)
        return tree_attention_triton(q, k_cache, v_cache, ctx.req_to_token, ctx.req_pool_indices,
                                     ctx.prefix_lens, ctx.extend_lens, ctx.extend_start_loc,
                                     ctx.positions, tree.trees, block_req, block_start, block_m,
                                     scaling, splits)

    out, ref = run_both(with_splits, contexts, ctx, q_heads)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("window", [None, 7])
def test_plain_extend_shares_the_tile_step(window):
    """The plain extend kernel runs the same attend_tile (a batch without trees; its own
    tests, tests/kernels/test_triton_kernels.py, need CUDA)."""
    contexts = PoolContexts(2, 16, torch.float32, num_slots=300, max_context=100, rows=4)
    fill_pool(contexts, torch.float32)
    contexts.context([0], [30])
    ctx = contexts.context([0, 1], [20, 40])
    out, ref = run_both(attention_triton, contexts, ctx, 4, window=window)
    assert ctx.attn_metadata.tree is None and rel_err(out, ref) < 1e-5


def test_non_causal_ignores_trees_as_the_reference():
    contexts = PoolContexts(2, 16, torch.float32, num_slots=300, max_context=100, rows=4)
    fill_pool(contexts, torch.float32)
    ctx = tree_batch(contexts, [(10, 4, 4), (6, 3, None)], random.Random(0))
    out, ref = run_both(attention_triton, contexts, ctx, 2, causal=False)
    assert rel_err(out, ref) < 1e-5


def test_host_plans():
    assert tree_block_m([8, 3], 4) == 32 and tree_block_m([1], 1) == 16 and tree_block_m([50], 8) == 64
    assert tree_row_blocks([8, 3], 4, 16) == ([0, 0, 1], [0, 16, 0])
    # one request of 8 KV heads on 132 SMs: split until two waves, capped by the keys
    assert tree_num_splits(1, 8, 100_000, 132) == MAX_SPLITS
    assert tree_num_splits(1, 8, 600, 132) == 3
    assert tree_num_splits(64, 8, 100_000, 132) == 1
    mask = torch.ones(3, 3, dtype=torch.bool)
    lens, offsets, flat = pack_tree_masks([mask, None, mask[1:]], [3, 2, 2], DEV)
    assert lens == [3, -1, 3] and offsets == [0, 0, 9] and flat.numel() == 15
    with pytest.raises(ValueError, match=r"tree_masks\[1\]"):
        pack_tree_masks([None, mask], [1, 2], DEV)
