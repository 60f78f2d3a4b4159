"""Mixture-of-experts: routing (which experts each token uses) and the expert GEMMs.

`select_experts` reproduces the routers of Qwen3-MoE / Mixtral (softmax, top-k, optional
renormalisation), DeepSeek-V2 (softmax, greedy or group-limited greedy top-k) and DeepSeek-V3
(sigmoid scores plus a correction bias for the choice only, top-k inside the best groups, where
a group scores the sum of its two best experts: "noaux_tc").

`fused_moe` computes sum_k w_k * down_e(silu(gate_e(x)) * up_e(x)) over each token's chosen
experts e: the Triton kernel (fused_moe_triton.py) on CUDA, the torch reference here elsewhere.
With `dropped` (expert parallel), an id equal to the number of experts given means "an expert
of another rank": that copy of the token contributes nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from rollserve.kernels.batch_invariant import enabled as batch_invariant_on, linear as batch_invariant_linear

from rollserve.kernels.dispatch import use_triton
from rollserve.kernels.moe_align import moe_align  # noqa: F401 (re-exported)


@dataclass(frozen=True)
class RoutingSpec:
    top_k: int
    scoring: str = "softmax"  # "softmax" | "sigmoid"
    renormalize: bool = True  # top-k weights divided by their sum
    num_groups: Optional[int] = None  # grouped routing: experts split into this many groups ...
    topk_groups: Optional[int] = None  # ... and only the best topk_groups groups are eligible
    group_score: str = "max"  # a group's score: its best expert ("max", V2) or best two ("top2", V3)
    scaling_factor: float = 1.0  # routed_scaling_factor, applied to the weights

    def __post_init__(self):
        if self.scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"scoring_func {self.scoring!r} is not supported (softmax, sigmoid)")


def select_experts(router_logits: torch.Tensor, spec: RoutingSpec,
                   correction_bias: Optional[torch.Tensor] = None
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """router_logits [T, E] -> (weights [T, top_k] float32, expert ids [T, top_k] int64)."""
    logits = router_logits.float()
    scores = logits.softmax(dim=-1) if spec.scoring == "softmax" else logits.sigmoid()
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if spec.num_groups and spec.topk_groups and spec.topk_groups < spec.num_groups:
        num_tokens, num_experts = choice.shape
        grouped = choice.view(num_tokens, spec.num_groups, num_experts // spec.num_groups)
        if spec.group_score == "top2":
            group_scores = grouped.topk(2, dim=-1)[0].sum(dim=-1)
        else:
            group_scores = grouped.max(dim=-1).values
        best_groups = group_scores.topk(spec.topk_groups, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        keep = keep[:, :, None].expand_as(grouped).reshape(num_tokens, num_experts)
        # V2 zeroes the other groups' (positive, softmax) scores, V3 excludes them outright
        choice = choice.masked_fill(~keep, float("-inf") if spec.group_score == "top2" else 0.0)
    ids = choice.topk(spec.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if spec.renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    if spec.scaling_factor != 1.0:
        weights = weights * spec.scaling_factor
    return weights, ids


def fused_moe_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    dropped: bool = False) -> torch.Tensor:
    """The reference: x [T, H], w13 [E, 2I, H] (gate rows then up rows), w2 [E, H, I],
    topk_weights / topk_ids [T, K] -> [T, H]. Token copies are grouped by expert, one matmul
    pair per expert that has any."""
    num_tokens, top_k = topk_ids.shape
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    # the id E ("another rank's expert") sorts last, after every expert held here
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()[:w13.shape[0]]
    flat_weights = topk_weights.reshape(-1)
    out = x.new_zeros(num_tokens * top_k, x.shape[1])
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        copies = order[start:start + count]
        start += count
        gate, up = _linear(x[copies // top_k], w13[expert]).chunk(2, dim=-1)
        down = _linear(F.silu(gate) * up, w2[expert])
        out[copies] = (down * flat_weights[copies, None]).to(out.dtype)
    return out.view(num_tokens, top_k, -1).sum(dim=1)


def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # an expert's row count depends on the batch: batch-invariant mode needs the fixed split
    return batch_invariant_linear(x, weight) if batch_invariant_on() else F.linear(x, weight)


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, dropped: bool = False) -> torch.Tensor:
    if use_triton(x) and not batch_invariant_on():  # its tiles follow the batch
        from rollserve.kernels.fused_moe_triton import fused_moe_triton

        return fused_moe_triton(x, w13, w2, topk_weights, topk_ids, dropped)
    return fused_moe_torch(x, w13, w2, topk_weights, topk_ids, dropped)
