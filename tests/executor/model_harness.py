"""Test-only stand-in for the model runner: owns a KV pool and request rows, allocates
slots for new tokens and builds the ForwardContext the way the runner does."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.torch_native import TorchNativeBackend
from rollserve.executor.kv_pool import KVPool, ReqToTokenPool, SlotAllocator


class KVHarness:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, num_slots: int = 2048,
                 max_requests: int = 16, max_context: int = 256, shuffle_slots: bool = True):
        self.pool = KVPool(num_slots, num_layers, num_kv_heads, head_dim, dtype, "cpu")
        self.allocator = SlotAllocator(num_slots)
        if shuffle_slots:  # requests' slots are not contiguous, as after frees in a real run
            generator = torch.Generator().manual_seed(0)
            free = self.allocator.free_slots
            self.allocator.free_slots = free[torch.randperm(free.numel(), generator=generator)]
        self.req_pool = ReqToTokenPool(max_requests, max_context, "cpu")
        self.seq_lens: Dict[int, int] = {}

    def new_request(self) -> int:
        row = self.req_pool.alloc()
        self.seq_lens[row] = 0
        return row

    def context(self, rows: Sequence[int], extend_lens: Sequence[int]) -> ForwardContext:
        """Allocates slots for extend_lens[i] new tokens of request rows[i] and records them."""
        prefix_lens = [self.seq_lens[r] for r in rows]
        out_cache_loc, positions = [], []
        for row, prefix, n in zip(rows, prefix_lens, extend_lens):
            slots = self.allocator.alloc(n)
            self.req_pool.write(row, prefix, slots)
            self.seq_lens[row] = prefix + n
            out_cache_loc.append(slots)
            positions.append(torch.arange(prefix, prefix + n))
        starts = [sum(extend_lens[:i]) for i in range(len(rows))]
        as_long = lambda values: torch.tensor(values, dtype=torch.int64)  # noqa: E731
        prefix_t, extend_t = as_long(prefix_lens), as_long(list(extend_lens))
        return ForwardContext(
            positions=torch.cat(positions), out_cache_loc=torch.cat(out_cache_loc),
            req_pool_indices=as_long(list(rows)), req_to_token=self.req_pool.req_to_token,
            prefix_lens=prefix_t, extend_lens=extend_t, seq_lens=prefix_t + extend_t,
            extend_start_loc=as_long(starts), kv_pool=self.pool,
            prefix_lens_cpu=list(prefix_lens), extend_lens_cpu=list(extend_lens),
            attn_backend=TorchNativeBackend(self.pool.device, self.pool.num_kv_heads))


class ModelHarness(KVHarness):
    """Runs a rollserve model on batches of (request row, new tokens)."""

    def __init__(self, model, **kwargs):
        super().__init__(model.num_layers, model.num_kv_heads, model.head_dim,
                         dtype=model.dtype, **kwargs)
        self.model = model

    @torch.inference_mode()
    def forward(self, rows: Sequence[int], tokens: Sequence[Sequence[int]]) -> List[torch.Tensor]:
        """One forward over all new tokens packed; returns each request's logits [n_i, vocab]."""
        ctx = self.context(rows, [len(t) for t in tokens])
        input_ids = torch.tensor([t for seq in tokens for t in seq], dtype=torch.int64)
        logits = self.model.compute_logits(self.model(input_ids, ctx.positions, ctx))
        return list(logits.split([len(t) for t in tokens]))
