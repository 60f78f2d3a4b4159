"""Routed experts for RL ("rollout routing replay"): the expert ids every MoE layer chose for
every token of a sequence, so a trainer can replay the rollout's routing exactly.

`RoutedExpertsStore` keeps one row per KV-pool slot, [slots, num_layers, top_k] int16 on the
executor's device, and is a ctx.moe_recorder: each MoE layer writes its top-k ids into the
rows of the slots this forward's tokens occupy (ctx.out_cache_loc). Keyed by KV slot rather
than by request because that is where a token's state lives: a prefix served from the radix
cache was routed when it was first computed, and its rows are still there; a retracted and
recomputed request rewrites its rows. Dense layers (DeepSeek's first_k_dense_replace) stay -1,
as SGLang marks them. The write is an index_put into a static buffer, so it is captured in the
decode CUDA graphs too (padded rows write the pool's padding slot).

The wire format is SGLang's: meta_info["routed_experts"] is base64 of the flattened
little-endian int32 array [tokens, num_layers, top_k], tokens [routed_experts_start_len,
seq_len - 1) (the last sampled token was never forwarded, so it has no routing).
"""

from __future__ import annotations

import base64
from typing import List, Optional

import numpy as np
import torch


class RoutedExpertsStore:
    def __init__(self, num_slots: int, num_layers: int, top_k: int, moe_layers: List[int],
                 device: torch.device, forward_to=None):
        self.num_layers, self.top_k = num_layers, top_k
        self.moe_layers = list(moe_layers)
        # int16: expert ids stay below 32768 in every released MoE (DeepSeek-V3: 256)
        self.rows = torch.full((num_slots, num_layers, top_k), -1, dtype=torch.int16, device=device)
        self.slots: Optional[torch.Tensor] = None  # this forward's ctx.out_cache_loc
        self.forward_to = forward_to  # the expert-distribution recorder, fed while it records

    @classmethod
    def for_model(cls, model, num_slots: int, device: torch.device) -> Optional["RoutedExpertsStore"]:
        info = model.moe_info() if hasattr(model, "moe_info") else None
        if not info or not info["moe_layers"]:
            return None
        return cls(num_slots, model.num_layers, info["top_k"], info["moe_layers"], device)

    @staticmethod
    def bytes_per_token(model) -> int:
        """What one KV slot's row costs (int16 per layer and choice): the pool sizing counts it."""
        info = model.moe_info() if hasattr(model, "moe_info") else None
        if not info or not info["moe_layers"]:
            return 0
        return model.num_layers * info["top_k"] * 2

    def bind(self, slots: torch.Tensor, forward_to=None) -> "RoutedExpertsStore":
        """Called before a forward (or a graph capture, with the graph's static slot buffer)."""
        self.slots, self.forward_to = slots, forward_to
        return self

    def record(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        n = topk_ids.shape[0]
        self.rows[self.slots[:n], layer_id] = topk_ids.to(torch.int16)
        if self.forward_to is not None:
            self.forward_to.record(layer_id, topk_ids)

    def gather(self, slots: torch.Tensor) -> torch.Tensor:
        """[len(slots), num_layers, top_k] int32 on the CPU, in the order of `slots`."""
        index = slots.to(device=self.rows.device, dtype=torch.int64)
        return self.rows.index_select(0, index).to(device="cpu", dtype=torch.int32)


def encode_routed_experts(ids: torch.Tensor) -> str:
    """SGLang's wire format: base64 of the int32 array (little-endian, C order)."""
    array = np.ascontiguousarray(ids.to(torch.int32).numpy()).astype("<i4", copy=False)
    return base64.b64encode(array.tobytes()).decode("ascii")


def decode_routed_experts(data: str, num_layers: int, top_k: int) -> np.ndarray:
    """[tokens, num_layers, top_k] int32 from encode_routed_experts' string."""
    flat = np.frombuffer(base64.b64decode(data), dtype="<i4")
    return flat.reshape(-1, num_layers, top_k)
