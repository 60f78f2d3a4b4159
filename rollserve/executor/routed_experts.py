"""Routed experts for RL: each MoE layer's chosen expert ids per token of a forward, so a
trainer can replay the rollout's routing, and their compact encoding.

`RoutingCapture` is a ctx.moe_recorder that keeps the ids [T, top_k] each MoE layer chose;
`ids()` stacks them into [T, num_moe_layers, top_k] (layer order = model order). The encoding
is SGLang-style base64 of the little-endian int array plus its shape and dtype.
The per-request plumbing (`return_routed_experts` on /generate, through the scheduler into
meta_info) is the follow-up; this is the part the model runner owns.
"""

from __future__ import annotations

import base64
from typing import Dict, List, Optional

import numpy as np
import torch


class RoutingCapture:
    def __init__(self, moe_layers: List[int], forward_to=None):
        self.moe_layers = list(moe_layers)
        self.forward_to = forward_to  # another recorder (the distribution counter) also fed
        self.choices: Dict[int, torch.Tensor] = {}

    def record(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        self.choices[layer_id] = topk_ids
        if self.forward_to is not None:
            self.forward_to.record(layer_id, topk_ids)

    def ids(self) -> torch.Tensor:
        """[T, num_moe_layers, top_k] int32 on the CPU."""
        return torch.stack([self.choices[layer] for layer in self.moe_layers], dim=1).to(
            device="cpu", dtype=torch.int32)


def encode_routed_experts(ids: torch.Tensor) -> dict:
    """{"data": base64 of the int32 array (little-endian, C order), "shape", "dtype"}."""
    array = np.ascontiguousarray(ids.to(torch.int32).numpy()).astype("<i4", copy=False)
    return {"data": base64.b64encode(array.tobytes()).decode("ascii"), "shape": list(array.shape),
            "dtype": "int32"}


def decode_routed_experts(encoded: dict) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(encoded["data"]), dtype="<i4")
    return data.reshape(encoded["shape"])


def capture_for(model) -> Optional[RoutingCapture]:
    info = model.moe_info() if hasattr(model, "moe_info") else None
    return RoutingCapture(info["moe_layers"]) if info and info["moe_layers"] else None
