"""Runs a draft model (executor/draft_models.py) beside the target: its own KV cache, and
the target's hidden states it drafts from.

The draft's KV cache is a one-layer pool indexed by the target's KV slot ids: the draft KV
of the token at position i of a request lives in the slot where the target keeps that
token's KV (req_to_token's row is shared). It therefore needs no allocator of its own: it
is taken and freed with the target's slots, prefixes shared through the radix cache
bring their draft KV along, and the pool is free whenever the target's is. The draft KV of
a shared prefix's last position was computed with the token that followed it in the
request that cached it: a different continuation then sees a slightly different draft,
which changes only how many drafts are accepted, never the output (the target verifies).

Draft tokens past the committed ones (a chain's steps 2..k) have no target slot yet: each
request row owns k - 1 scratch slots past the target's range, entered into its
req_to_token row past its KV length while the chain is drafted, then reset to the padding
slot 0 (scheduler/model_drafter.py): the target's pool has no such slots.

Hidden states: `HiddenCapture` on the model runner makes every target forward keep, for
every token, what the draft reads (the final hidden state, or EAGLE3's three layers'
streams); the decode and verify CUDA graphs are captured with it and return those states
beside the logits (executor/graph_dispatch.py). A chain's draft steps replay graphs of their
own (executor/draft_graph_runner.py).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.registry import create_attention_backend
from rollserve.executor.draft_graph_runner import DraftGraphRunner
from rollserve.executor.draft_lockstep import DraftLockstep
from rollserve.executor.draft_models import DraftModel, load_draft_model
from rollserve.executor.forward_batch import HostBatch, build_context
from rollserve.executor.kv_pool import KVPool
from rollserve.executor.layers.rotary import RotaryEmbedding
from rollserve.executor.mla_kv_pool import MLAKVPool
from rollserve.executor.parallel_state import broadcast_tensor


class HiddenCapture:
    """Installed on a ModelRunner: each forward's ForwardOutput.spec_hidden is [T, H] (the
    target's final hidden state of every token) or, with `layers`, [T, len(layers) * H]
    (the residual stream entering each of those layers, models/llama.py)."""

    def __init__(self, layers: Optional[Sequence[int]] = None):
        self.layers = frozenset(layers) if layers else None
        self.order = tuple(sorted(set(layers))) if layers else ()
        self.wanted = tuple(layers) if layers else ()

    def begin(self, ctx: ForwardContext) -> None:
        if self.layers is not None:
            ctx.capture_layers, ctx.aux_hidden = self.layers, []

    def collect(self, ctx: ForwardContext, hidden: torch.Tensor) -> torch.Tensor:
        if self.layers is None:
            return hidden
        by_layer = dict(zip(self.order, ctx.aux_hidden))  # captured in layer order
        return torch.cat([by_layer[i] for i in self.wanted], dim=-1)


def scratch_slots_per_row(num_drafts: int, topk: int = 1, num_steps: Optional[int] = None) -> int:
    """Scratch slots each request row owns: a chain's drafts 2..k have no target slot; a
    tree's frontier takes topk of them per draft step past the first."""
    if topk > 1:
        return max(((num_steps or num_drafts) - 1) * topk, 0)
    return max(num_drafts - 1, 0)


def draft_kv_bytes_per_token(model: DraftModel, mla_dims, dtype: torch.dtype) -> int:
    """One token's draft KV on this rank (one layer: MLA's latent, else the head's K and V);
    the model runner sizes the target's pool with it (executor/kv_budget.py)."""
    if mla_dims is not None:
        return MLAKVPool.latent_bytes_per_token(1, mla_dims.latent_dim, dtype)
    heads, head_dim = model.kv_layout()
    return KVPool.bytes_per_token(1, heads, head_dim, dtype)


class DraftRunner:
    def __init__(self, runner, algorithm: str, path: Optional[str], num_drafts: int,
                 forwards_per_step: int = 1):
        self.runner = runner
        self.device = runner.device
        spec = runner.config.draft  # loaded with the target, inside the memory budget
        self.model: DraftModel = runner.draft_model if spec is not None and \
            (spec.algorithm, spec.path) == (algorithm, path) else \
            load_draft_model(algorithm, path, runner.model, runner.dtype, runner.device)
        for module in self.model.modules():
            if isinstance(module, RotaryEmbedding):
                module.cache_positions(runner.context_len + 1)
        self.scratch_per_row = scratch_slots_per_row(num_drafts)
        # DP attention with an MoE draft (NEXTN): every rank runs forwards_per_step draft forwards
        self.lockstep = DraftLockstep.for_model(self.model, forwards_per_step, runner.dtype,
                                                self.device)
        runner.draft_lockstep = self.lockstep  # its target forwards settle the draft's
        self.scratch_base = runner.max_total_tokens + 1  # past the target's slots (and slot 0)
        slots = runner.max_total_tokens + runner.max_running_requests * self.scratch_per_row
        if runner.mla_dims is not None:
            dims = runner.mla_dims
            self.pool = MLAKVPool(slots, 1, dims.kv_lora_rank, dims.qk_rope_head_dim,
                                  runner.dtype, self.device)
        else:
            heads, head_dim = self.model.kv_layout()
            self.pool = KVPool(slots, 1, heads, head_dim, runner.dtype, self.device)
        self.backend = create_attention_backend(runner.attention_backend, self.device,
                                                self.pool.num_kv_heads)
        self.chain_graphs: Optional[DraftGraphRunner] = None  # chain steps' graphs, built lazily
        self.chain_graphs_for = None  # the target decode graphs they were built beside
        wanted = tuple(self.model.aux_layers or ())
        if runner.hidden_capture is None or runner.hidden_capture.wanted != wanted:
            # the graphs must return the states this draft reads: captured again with them
            runner.hidden_capture = HiddenCapture(self.model.aux_layers)
            runner.capture_cuda_graphs()

    def scratch_slot(self, row: int, k: int) -> int:
        """Request row `row`'s scratch slot for its (k + 2)-th draft token (k from 0)."""
        return self.scratch_base + row * self.scratch_per_row + k

    def forward(self, rows: List[int], prefix_lens: List[int], tokens: List[List[int]],
                slots: torch.Tensor, hidden: torch.Tensor, positions: Optional[List[int]] = None,
                tree_masks: Optional[List[torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """One draft forward: request row rows[i] brings tokens[i] at positions prefix_lens[i]..,
        writing their draft KV into slots (packed); hidden [T, H_in] (packed). Returns the
        packed (states for the logits, states for the next step). A tree step
        (scheduler/tree_drafter.py) gives every token's position and each request's tree mask
        over its last keys (the tree nodes entered in its row past its committed KV)."""
        runner = self.runner
        runner.req_pool.flush()  # scratch slots entered since the last forward
        extend = [len(t) for t in tokens]
        starts = np.concatenate([[0], np.cumsum(extend)[:-1]]).astype(np.int64).tolist()
        host = HostBatch(
            input_ids=np.fromiter((t for ts in tokens for t in ts), dtype=np.int64, count=sum(extend)),
            positions=np.asarray(positions, dtype=np.int64) if positions is not None else
            np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in zip(prefix_lens, extend)]),
            out_cache_loc=slots.numpy().astype(np.int64, copy=False), req_pool_indices=list(rows),
            prefix_lens=list(prefix_lens), extend_lens=extend, starts=starts, tree_masks=tree_masks)
        ctx, input_ids = build_context(host, self.device, runner.future_tokens,
                                       runner.req_pool.req_to_token, self.pool, self.backend)
        if self.lockstep is not None:  # the MoE block's exchanges need every rank's count
            ctx.dp_token_counts = self.lockstep.counts(int(input_ids.shape[0]))
        with torch.inference_mode():
            return self.model(input_ids, ctx.positions, ctx, hidden)

    def chain_step(self, rows: List[int], positions: List[int], tokens: List[int],
                   slots: List[int], carried: torch.Tensor) -> Tuple[List[int], torch.Tensor]:
        """One draft step of chains (scheduler/model_drafter.py): request row rows[i] brings
        tokens[i] at positions[i], its draft KV into slots[i]; carried [B, W] the states of the
        previous step. Returns (the draft's ids, the states carried on), through the chain-step
        graphs where they run (executor/draft_graph_runner.py), else eager."""
        graphs = self._chain_graphs(len(rows), carried)
        if graphs is None:
            for_logits, carried = self.forward(rows, positions, [[t] for t in tokens],
                                               torch.tensor(slots, dtype=torch.int64), carried)
            return self.draft_ids(for_logits), carried
        self.runner.req_pool.flush()  # the scratch slots just entered in req_to_token
        with torch.inference_mode():
            ids, carried = graphs.step(rows, positions, tokens, slots, carried)
            return broadcast_tensor(ids).tolist(), carried

    def _chain_graphs(self, batch: int, carried: torch.Tensor) -> Optional[DraftGraphRunner]:
        """The chain-step graphs, (re)built for the target's current decode graphs (same sizes;
        none when the target has none): captured at the first step, which gives their width."""
        runner, target = self.runner, self.runner.graph_runner
        if target is None or self.lockstep is not None:  # (DP attention captures no graphs)
            self.chain_graphs = None
            return None
        if self.chain_graphs_for is not target:
            self.chain_graphs, self.chain_graphs_for = None, target
            # a backend that plans each replay on the host (flashinfer) is not planned here
            if (self.backend.supports_cuda_graph and not self.backend.plans_per_replay) or \
                    runner.graphs_eager:
                self.chain_graphs = DraftGraphRunner(
                    self.model, self.pool, self.backend, runner.req_pool.req_to_token, target.sizes,
                    carried.shape[-1], carried.dtype, self.device, runner.graphs_eager or None)
        graphs = self.chain_graphs
        return graphs if graphs is not None and graphs.can_run(batch, carried) else None

    def draft_ids(self, states: torch.Tensor) -> List[int]:
        """The draft's argmax; under TP rank 0's on every rank, so that the ranks cannot
        propose apart (their schedulers must build the same verify batch)."""
        with torch.inference_mode():
            return broadcast_tensor(self.model.draft_ids(states)).tolist()

    def draft_topk(self, states: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The draft's k likeliest tokens and their log-probs (tree drafts); under TP rank 0's
        on every rank, as draft_ids: the ranks must grow the same trees."""
        with torch.inference_mode():
            logp, ids = self.model.draft_topk(states, k)
            return broadcast_tensor(logp.contiguous()), broadcast_tensor(ids.contiguous())

    def weights_changed(self) -> None:
        """The target's weights were written: NEXTN's layer is part of them and reloads; an
        EAGLE head reads the target's embeddings and head where they live, and keeps its own
        layer as loaded from --speculative-draft-model-path (docs/speculative.md)."""
        sync = getattr(self.model, "sync_from_target", None)
        if sync is not None:
            sync()
