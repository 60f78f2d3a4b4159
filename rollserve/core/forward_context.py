"""The per-forward attention metadata, built once by the model runner and passed
explicitly to every layer (no globals).

One layout serves prefill, chunked prefill, decode and any mix of them: request i
of the batch already has `prefix_lens[i]` tokens in the KV pool and brings
`extend_lens[i]` new tokens. Decode is the case extend_lens == 1 for every request.
The new tokens of all requests are packed back to back (no padding), request i
owning rows `extend_start_loc[i] : extend_start_loc[i] + extend_lens[i]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch


@dataclass
class ForwardContext:
    positions: torch.Tensor  # [T] int64, position of each new token in its sequence
    out_cache_loc: torch.Tensor  # [T] int64, KV-pool slot each new token writes
    req_pool_indices: torch.Tensor  # [B] int64, row of each request in req_to_token
    req_to_token: torch.Tensor  # [max_reqs, max_context] int32, request row -> slots
    prefix_lens: torch.Tensor  # [B] int64, tokens already in the pool
    extend_lens: torch.Tensor  # [B] int64, new tokens this forward
    seq_lens: torch.Tensor  # [B] int64, prefix_lens + extend_lens
    extend_start_loc: torch.Tensor  # [B] int64, offset of request i's first new token
    kv_pool: Any  # the executor's KVPool: store(layer, slots, k, v), kv(layer) -> (k, v) buffers
    # host copies, so the CPU reference path can loop without device syncs
    prefix_lens_cpu: List[int]
    extend_lens_cpu: List[int]
    attn_backend: Any = None  # the executor's AttentionBackend (executor/attention/base.py)
    attn_metadata: Any = None  # what attn_backend.prepare_metadata derived for this forward
    moe_recorder: Any = None  # MoE models report each layer's expert choices here (optional)
    dp_token_counts: Optional[List[int]] = None  # DP attention: every rank's tokens this forward
    # EAGLE3 drafts: the residual stream entering these layers is appended to aux_hidden
    capture_layers: Optional[frozenset] = None
    aux_hidden: Optional[List[Any]] = None
    # tree attention (speculative tree drafts): per request None or a bool [extend_len, M] mask
    # over its last M keys (the new tokens and, for the draft's steps, earlier tree nodes);
    # the keys before those are all visible (executor/attention/tree_mask.py)
    tree_masks: Optional[List[Optional[torch.Tensor]]] = None
    mm: Any = None  # VLMs: this forward's image features and 3-D rope positions (executor/multimodal.py)

    @property
    def batch_size(self) -> int:
        return len(self.extend_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @property
    def is_decode(self) -> bool:
        return all(n == 1 for n in self.extend_lens_cpu)
