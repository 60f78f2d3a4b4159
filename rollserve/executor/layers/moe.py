"""The sparse MoE block: router, routed experts (one [E, 2I, H] gate|up and one [E, H, I] down
tensor, so the fused kernel reads every expert from one place) and optional shared experts.

Checkpoints name each expert separately (`experts.{e}.gate_proj.weight`, Mixtral's
`experts.{e}.w1.weight`); `checkpoint_targets` maps those names onto slices of the stacked
tensors. Under tensor parallelism the experts are split as layers/moe_parallel.py says (each
expert's rows, or whole experts with --ep-size), and one all-reduce ends the block; under DP
attention with whole experts and --moe-a2a-backend deepep, tokens travel to their experts'
ranks and back instead (layers/moe_dispatch.py).
A recorder on the forward context (ctx.moe_recorder) sees each layer's choices: the
expert-distribution counters and the routed experts returned for RL read them there.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.linear import FusedLinear
from rollserve.executor.layers.moe_dispatch import dispatch_combine
from rollserve.executor.layers.moe_parallel import expert_layout
from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.layers.parallel import RowParallelLinear, column_slices
from rollserve.executor.parallel_state import (all_gather_rows, all_reduce, dp_attention, group_size,
                                               moe_a2a, split_evenly, tp_rank, tp_size)
from rollserve.kernels.linear import linear
from rollserve.kernels.activation import silu_and_mul
from rollserve.kernels.moe import RoutingSpec, fused_moe, select_experts

# checkpoint names of an expert's (gate, up, down) projections
EXPERT_NAMES = {"default": ("gate_proj", "up_proj", "down_proj"), "mixtral": ("w1", "w3", "w2")}


class GatedMLP(nn.Module):
    """down(silu(gate(x)) * up(x)) on already-normed input (dense layers and shared experts).
    Under TP each rank holds its intermediate rows and returns its partial sum: the caller
    all-reduces (the MoE block adds it to its experts' part first: one all-reduce)."""

    def __init__(self, hidden_size: int, intermediate_size: int):
        super().__init__()
        start, size = split_evenly(intermediate_size, tp_rank(), tp_size(), "intermediate_size")
        slices = None if tp_size() == 1 else column_slices(
            {"gate_proj": (start, size), "up_proj": (start, size)}, False)
        self.gate_up_proj = FusedLinear(hidden_size, {"gate_proj": size, "up_proj": size},
                                        bias=False, slices=slices)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = silu_and_mul(linear(x, self.gate_up_proj.weight))
        return linear(act, self.down_proj.weight)


class MoERouter(nn.Module):
    """The `gate` of the checkpoints: [E, H] logits weight (+ V3's e_score_correction_bias)."""

    def __init__(self, hidden_size: int, num_experts: int, spec: RoutingSpec, correction_bias: bool):
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.e_score_correction_bias = (nn.Parameter(torch.zeros(num_experts, dtype=torch.float32))
                                        if correction_bias else None)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logits = torch.nn.functional.linear(x.float(), self.weight.float())
        return select_experts(logits, self.spec, self.e_score_correction_bias)


class RoutedExperts(nn.Module):
    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int,
                 names: Tuple[str, str, str]):
        super().__init__()
        self.layout = expert_layout(num_experts, intermediate_size)
        self.num_experts, self.names = num_experts, names
        self.intermediate_size = size = self.layout.inter_local  # this rank's rows of each
        local = self.layout.num_local
        self.w13_weight = nn.Parameter(torch.empty(local, 2 * size, hidden_size))
        self.w2_weight = nn.Parameter(torch.empty(local, hidden_size, size))
        self.tp_slices = self.layout.slices(names)

    def checkpoint_targets(self) -> Dict[str, Tuple[nn.Parameter, tuple]]:
        """Per-expert checkpoint name (relative to this module) -> (stacked parameter, index);
        an expert another rank holds gets an empty index (its slice here is empty too)."""
        gate, up, down = self.layout.names_of(self.names)
        size = self.intermediate_size
        targets = {}
        for e in range(self.num_experts):
            if self.layout.is_local(e):
                i = e - self.layout.first_local
                rows_gate, rows_up, rows_down = (i, slice(0, size)), (i, slice(size, 2 * size)), (i,)
            else:
                rows_gate = rows_up = (0, slice(0, 0))
                rows_down = (0, slice(None), slice(0, 0))
            targets[gate % e] = (self.w13_weight, rows_gate)
            targets[up % e] = (self.w13_weight, rows_up)
            targets[down % e] = (self.w2_weight, rows_down)
        return targets

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """This rank's part of the experts' output (the block all-reduces under TP)."""
        if self.layout.num_local == self.num_experts:
            return fused_moe(x, self.w13_weight, self.w2_weight, weights, ids)
        return fused_moe(x, self.w13_weight, self.w2_weight, weights, self.layout.local_ids(ids),
                         dropped=True)

    def run_local(self, rows: torch.Tensor, local_ids: torch.Tensor) -> torch.Tensor:
        """The all-to-all dispatch's rows [N, H], each for one of this rank's experts
        (`local_ids` [N]); unweighted (the token's rank applies the top-k weights)."""
        ones = torch.ones(rows.shape[0], 1, dtype=rows.dtype, device=rows.device)
        return fused_moe(rows, self.w13_weight, self.w2_weight, ones, local_ids.unsqueeze(1))


class SparseMoeBlock(nn.Module):
    """Router + routed experts (+ shared experts, whose output is added)."""

    def __init__(self, hidden_size: int, num_experts: int, intermediate_size: int, spec: RoutingSpec,
                 layer_id: int, shared_intermediate_size: int = 0, correction_bias: bool = False,
                 expert_names: Tuple[str, str, str] = EXPERT_NAMES["default"]):
        super().__init__()
        self.layer_id = layer_id
        self.num_experts = num_experts
        self.top_k = spec.top_k
        self.gate = MoERouter(hidden_size, num_experts, spec, correction_bias)
        self.experts = RoutedExperts(num_experts, hidden_size, intermediate_size, expert_names)
        self.shared_experts = (GatedMLP(hidden_size, shared_intermediate_size)
                               if shared_intermediate_size else None)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor, norm: RMSNorm,
                ctx: Optional[ForwardContext] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Same contract as LlamaMLP: (block(norm(hidden + residual)), the new residual)."""
        x, residual = norm(hidden, residual)
        return self.moe(x, ctx), residual

    def moe(self, x: torch.Tensor, ctx: Optional[ForwardContext] = None,
            counts: Optional[List[int]] = None) -> torch.Tensor:
        """The block's output for normed `x`. Under DP attention each rank brings its own
        tokens (an idle rank none, ModelRunner.idle_forward): the experts see every rank's,
        the all-reduce adds the ranks' expert parts, each rank keeps its rows; the shared
        experts are whole on every rank and run on its own tokens. With the all-to-all
        dispatch each rank routes its own tokens and only their copies travel."""
        if not dp_attention():
            out = self._routed(x, ctx)
            if self.shared_experts is not None:
                out = out + self.shared_experts(x)
            return all_reduce(out)  # the ranks' parts (identity on one rank)
        # every rank's token count, exchanged once per forward (ctx, or the idle pass's own)
        counts = counts if counts is not None else ctx.dp_token_counts
        if moe_a2a():
            return self._dispatched(x, ctx, counts)
        every, mine = all_gather_rows(x, counts)
        if every.shape[0] == 0:  # no rank had a token (all agree: they saw the same counts)
            return x
        out = all_reduce(self._routed(every, ctx, mine))[mine]
        return out if self.shared_experts is None else out + self.shared_experts(x)

    def _dispatched(self, x: torch.Tensor, ctx: Optional[ForwardContext],
                    counts: List[int]) -> torch.Tensor:
        if sum(counts) == 0:  # no rank has a token: all skip the exchange alike
            return x
        weights, ids = self.gate(x)
        recorder = getattr(ctx, "moe_recorder", None)
        if recorder is not None:  # this rank routed only its own tokens: all of them are its
            recorder.record(self.layer_id, ids)
        out = dispatch_combine(x, weights.to(x.dtype), ids, self.num_experts, group_size(),
                               self.experts.run_local)
        return out if self.shared_experts is None else out + self.shared_experts(x)

    def _routed(self, x: torch.Tensor, ctx: Optional[ForwardContext],
                mine: Optional[slice] = None) -> torch.Tensor:
        weights, ids = self.gate(x)
        recorder = getattr(ctx, "moe_recorder", None)
        if recorder is not None:  # this rank's tokens' choices (mine: its rows of every rank's)
            recorder.record(self.layer_id, ids if mine is None else ids[mine])
        return self.experts(x, weights.to(x.dtype), ids)


def idle_exchanges(model: nn.Module, counts: List[int], dtype: torch.dtype,
                   device: torch.device) -> None:
    """DP attention: a rank with no tokens in a forward still enters each of the model's MoE
    blocks' exchanges (in layer order, as the forward meets them), bringing none, so the ranks
    that run tokens are not left waiting. `counts`: the forward's token counts, every rank's."""
    if not any(counts):  # no rank runs a token: every rank skips alike
        return
    with torch.inference_mode():
        for block in model.modules():
            if isinstance(block, SparseMoeBlock):
                width = block.gate.weight.shape[1]
                block.moe(torch.empty(0, width, dtype=dtype, device=device), counts=counts)
