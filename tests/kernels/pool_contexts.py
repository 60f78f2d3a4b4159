"""A KV pool with request rows on the GPU, and an attention backend checked against the
torch reference over a float32 copy of that pool (shared by the backends' kernel tests).
Without CUDA it lives on the CPU (tests that run Triton's interpreter, TRITON_INTERPRET=1)."""

import random

import torch

from rollserve.core.draft_tree import ancestor_mask, depths
from rollserve.core.forward_context import ForwardContext
from rollserve.executor.kv_pool import KVPool
from rollserve.executor.attention.registry import create_attention_backend
from rollserve.executor.attention.torch_native import TorchNativeBackend, attention_torch
from rollserve.kernels.rotary import RopeInputs, rope_cos_sin

DEV = "cuda" if torch.cuda.is_available() else "cpu"


class PoolContexts:
    """A KV pool and request rows on the GPU; hands out contexts for (row, new tokens) batches."""

    def __init__(self, num_kv_heads, head_dim, dtype, num_slots=20000, max_context=6000, rows=16,
                 backend="triton"):
        self.pool = KVPool(num_slots, 1, num_kv_heads, head_dim, dtype, DEV)
        self.backend = create_attention_backend(backend, DEV, num_kv_heads)
        self.req_to_token = torch.zeros(rows, max_context, dtype=torch.int32, device=DEV)
        self.free = torch.randperm(num_slots, device="cpu") + 1  # scattered slots
        self.lens = [0] * rows

    def context(self, rows, extend_lens) -> ForwardContext:
        prefix = [self.lens[r] for r in rows]
        locs, positions = [], []
        for r, p, n in zip(rows, prefix, extend_lens):
            slots, self.free = self.free[:n], self.free[n:]
            self.req_to_token[r, p:p + n] = slots.to(DEV, torch.int32)
            self.lens[r] = p + n
            locs.append(slots)
            positions.append(torch.arange(p, p + n))
        t = lambda v: torch.tensor(v, dtype=torch.int64, device=DEV)  # noqa: E731
        starts = [sum(extend_lens[:i]) for i in range(len(rows))]
        return ForwardContext(
            positions=torch.cat(positions).to(DEV), out_cache_loc=torch.cat(locs).to(DEV),
            req_pool_indices=t(rows), req_to_token=self.req_to_token, prefix_lens=t(prefix),
            extend_lens=t(extend_lens), seq_lens=t([p + n for p, n in zip(prefix, extend_lens)]),
            extend_start_loc=t(starts), kv_pool=self.pool, prefix_lens_cpu=prefix,
            extend_lens_cpu=list(extend_lens), attn_backend=self.backend)


def run_both(attention_fn, contexts, ctx, q_heads, window=None, causal=True):
    """(attention_fn's output, the float32 torch reference) on random q, k, v for ctx."""
    tokens, dtype = ctx.num_tokens, contexts.pool.dtype
    kv_heads, head_dim = contexts.pool.num_kv_heads, contexts.pool.head_dim
    q = torch.randn(tokens, q_heads, head_dim, dtype=dtype, device=DEV)
    k = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=DEV)
    v = torch.randn(tokens, kv_heads, head_dim, dtype=dtype, device=DEV)
    out = attention_fn(q, k, v, ctx, 0, head_dim ** -0.5, window, causal)
    ref = attention_torch(q.float(), k.float(), v.float(), as_float(ctx, contexts), 0,
                          head_dim ** -0.5, window, causal)
    return out, ref


def as_float(ctx, contexts):
    """The same context over a float32 copy of the pool (the reference in higher precision)."""
    pool32 = KVPool(1, 1, contexts.pool.num_kv_heads, contexts.pool.head_dim, torch.float32, DEV)
    pool32.k_buffers = [contexts.pool.k_buffers[0].float()]
    pool32.v_buffers = [contexts.pool.v_buffers[0].float()]
    pool32.dtype = torch.float32
    return ForwardContext(**{**ctx.__dict__, "kv_pool": pool32,
                             "attn_backend": TorchNativeBackend(DEV, pool32.num_kv_heads),
                             "attn_metadata": None})


def rope_inputs(positions, head_dim, dtype, qk_norm):
    """Llama-style rotation inputs for positions (with random per-head norms when qk_norm)."""
    inv_freq = 1.0 / (500000.0 ** (torch.arange(0, head_dim, 2, device=DEV).float() / head_dim))
    cos, sin = rope_cos_sin(positions, inv_freq, 1.0)
    if not qk_norm:
        return RopeInputs(cos, sin)
    q_w, k_w = torch.randn(2, head_dim, dtype=dtype, device=DEV)
    return RopeInputs(cos, sin, q_w, k_w, 1e-6)


def random_parents(n: int, rng: random.Random) -> list:
    """A random tree of n rows in parents-first order (row 0 the root)."""
    return [-1] + [rng.randrange(i) for i in range(1, n)]


def tree_batch(contexts, requests, rng):
    """A forward over `requests`, each (prefix, new rows E, tree rows M or None): its prefix gets
    slots first (their K/V: what the pool holds, see fill_pool), then a context whose tree
    requests carry an [E, M] mask of a random M-row tree's last E rows, at positions
    committed + depth (committed = prefix - (M - E): the earlier tree rows sit in the prefix)."""
    rows = list(range(len(requests)))
    for r, (prefix, _, _) in zip(rows, requests):
        contexts.lens[r] = 0
        if prefix:  # slots only: the prefix's K/V is whatever the pool holds there (random)
            contexts.context([r], [prefix])
    ctx = contexts.context(rows, [e for _, e, _ in requests])
    masks, positions = [], []
    for prefix, extend, tree in requests:
        if tree is None:
            masks.append(None)
            positions.append(torch.arange(prefix, prefix + extend))
            continue
        parents = random_parents(tree, rng)
        masks.append(ancestor_mask(parents)[tree - extend:].to(DEV))
        committed = prefix + extend - tree
        positions.append(committed + torch.tensor(depths(parents)[tree - extend:]))
    ctx.tree_masks = masks
    ctx.positions = torch.cat(positions).to(DEV)
    return ctx


def fill_pool(contexts, dtype):
    """Random K/V in every slot (the prefixes tree_batch gives no K/V of their own)."""
    for buf in contexts.pool.k_buffers + contexts.pool.v_buffers:
        buf.copy_(torch.randn(buf.shape, dtype=torch.float32, device=DEV).to(dtype))
