"""The one interface every attention backend implements (torch_native, triton, flashinfer; an
MLA backend for DeepSeek-style models is one more file plus a line in registry.py).

A backend lives as long as the model runner. Per forward, the runner calls
`prepare_metadata(ctx)` once and stores what it returns in `ctx.attn_metadata`; every layer
then calls `forward(...)` through `attention()`. Decode CUDA graphs use the same object
generically: `capture_metadata(bs, max_slots)` gives the metadata fixed for a captured batch
size, and backends that plan on the host (`plans_per_replay`) get `prepare_for_replay`
before each replay. Nothing outside registry.py compares backend names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, List, Optional

import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.kernels.rotary import RopeInputs


class AttentionBackend(ABC):
    name: str = ""
    supports_cuda_graph: bool = False  # decode steps may be captured and replayed
    plans_per_replay: bool = False  # prepare_for_replay must run before each replay
    # speculative verify forwards (fixed rows per request) may be captured
    supports_verify_cuda_graph: bool = False

    def __init__(self, device: torch.device, num_kv_heads: int):
        self.device = torch.device(device)
        self.num_kv_heads = num_kv_heads

    def prepare_metadata(self, ctx: ForwardContext) -> Any:
        """What every layer of this (eager) forward shares; None when nothing is needed."""
        return None

    def capture_metadata(self, batch_size: int, max_slots: int) -> Any:
        """The metadata of a captured decode graph of `batch_size` requests (fixed buffers)."""
        raise NotImplementedError(f"the {self.name} backend does not capture CUDA graphs")

    def capture_verify_metadata(self, ctx: ForwardContext) -> Any:
        """The metadata of a captured verify graph (executor/verify_graph_runner.py): ctx has
        the graph's static tensors and a fixed extend length per request; only what depends
        on those lengths may be planned, on the device."""
        raise NotImplementedError(f"the {self.name} backend does not capture verify graphs")

    def prepare_for_replay(self, ctx: ForwardContext, seq_lens: List[int]) -> None:
        """Before a replay: plan for the batch now in the graph's input buffers."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                layer_id: int, scaling: float, sliding_window: Optional[int] = None,
                causal: bool = True, rope: Optional[RopeInputs] = None) -> torch.Tensor:
        """Stores k, v [T, Hkv, D] in the pool at ctx.out_cache_loc and returns the attention
        of q [T, Hq, D] over each request's sequence, [T, Hq, D]. With `rope`, q and k are
        first (per-head normed and) rotated, q possibly in place."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
              layer_id: int, scaling: float, sliding_window: Optional[int] = None,
              causal: bool = True, rope: Optional[RopeInputs] = None) -> torch.Tensor:
    """What the models call: the forward of the backend the context carries."""
    return ctx.attn_backend.forward(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)
