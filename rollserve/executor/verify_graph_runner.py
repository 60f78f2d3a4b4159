"""Speculative verify forwards (chains) replayed from CUDA graphs, one graph per batch size.

A chain verify step brings, per request, [last token, d drafts] at positions kv_len ..
kv_len + d (scheduler/speculative.py). Here every request of a captured size brings exactly
`num_rows` (= --speculative-num-draft-tokens) rows: a request with fewer drafts is padded with
rows that continue its positions, write their KV into the pool's padding slot 0 and whose
logits are dropped (causal attention keeps its real rows from seeing them); a batch of B
requests runs the graph of the smallest captured size >= B, the padding requests reading request
row 0 with no prefix and writing slot 0, as the decode graph pads. Every request therefore has
extend length num_rows, so the Triton extend kernel's query-block list is fixed per size and is
built once at capture, on the device (TritonBackend.capture_verify_metadata); nothing in the
captured region reads the host.

The graph's inputs are one static int64 block per size (ids, positions, KV slots per row;
request rows, prefix and sequence lengths per request) filled by one non-blocking copy. The
outputs are every row's logits and, with a draft model, its hidden states (HiddenCapture);
`replay` gathers the real rows, packed as the eager forward packs them.

`eager=True` (a device other than CUDA) runs the same forward over the same static buffers
without capturing, so the staging, padding and row selection run in the CPU tests.

Runs eager instead (the caller's can_run): tree drafts (a per-step tree mask), any entry with
more than num_rows tokens or asking for rows other than all of its own (prefill chunks, input
logprobs), batches above the largest size, requests so close to the context length that a
padded row would fall outside the slot table. Grammar masks are applied to the logits after
the forward (scheduler/speculative.py), so constrained requests replay as well.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.cuda_graph_runner import capture_per_size, capture_sizes, pinned, run_size
from rollserve.executor.forward_batch import HostBatch, resolve_placeholders
from rollserve.kernels.dispatch import host_to_device

logger = logging.getLogger(__name__)

# verify graphs hold bs * num_rows logits rows each: a smaller default than decode's 512
DEFAULT_VERIFY_MAX_BS = 64
_IDS, _POS, _SLOTS = range(3)  # per-row blocks
_ROWS, _PREFIX, _SEQ = range(3)  # per-request blocks


def verify_sizes(cuda_graph_max_bs: Optional[int], cuda_graph_bs: Optional[Sequence[int]],
                 max_running_requests: int) -> List[int]:
    """The verify batch sizes to capture: --cuda-graph-bs as given, else up to
    --cuda-graph-max-bs (default DEFAULT_VERIFY_MAX_BS); none above max_running_requests."""
    max_bs = min(cuda_graph_max_bs or DEFAULT_VERIFY_MAX_BS, max_running_requests)
    return [s for s in capture_sizes(max_bs, list(cuda_graph_bs or [])) if s <= max_running_requests]


class VerifyGraphRunner:
    def __init__(self, model, kv_pool, req_to_token: torch.Tensor, future_tokens: torch.Tensor,
                 attn_backend: AttentionBackend, sizes: List[int], num_rows: int,
                 routed_experts=None, hidden_capture=None, eager: Optional[bool] = None):
        self.model = model
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.future_tokens = future_tokens
        self.attn_backend = attn_backend
        self.sizes = sizes
        self.max_bs = sizes[-1]
        self.num_rows = num_rows
        self.routed_experts = routed_experts
        self.hidden_capture = hidden_capture
        self.device = future_tokens.device
        self.eager = self.device.type != "cuda" if eager is None else eager
        self.inputs = {bs: torch.zeros(3 * bs * num_rows + 3 * bs, dtype=torch.int64,
                                       device=self.device) for bs in sizes}
        self.contexts = {bs: self._context(bs) for bs in sizes}
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, tuple] = {}
        self.replays = 0  # forwards run through this runner (tests, benchmarks)
        if not self.eager:
            self._capture()

    def _views(self, bs: int) -> Tuple[torch.Tensor, torch.Tensor]:
        block = self.inputs[bs]
        rows = bs * self.num_rows
        return block[:3 * rows].view(3, rows), block[3 * rows:].view(3, bs)

    def _context(self, bs: int) -> ForwardContext:
        tokens, per_req = self._views(bs)
        n = self.num_rows
        ctx = ForwardContext(
            positions=tokens[_POS], out_cache_loc=tokens[_SLOTS], req_pool_indices=per_req[_ROWS],
            req_to_token=self.req_to_token, prefix_lens=per_req[_PREFIX],
            extend_lens=torch.full((bs,), n, dtype=torch.int64, device=self.device),
            seq_lens=per_req[_SEQ],
            extend_start_loc=torch.arange(0, bs * n, n, dtype=torch.int64, device=self.device),
            kv_pool=self.kv_pool, prefix_lens_cpu=[0] * bs, extend_lens_cpu=[n] * bs,
            attn_backend=self.attn_backend)
        if not self.eager:  # fixed for the graph's lifetime: depends on the extend lengths only
            ctx.attn_metadata = self.attn_backend.capture_verify_metadata(ctx)
        return ctx

    def _run_model(self, bs: int) -> tuple:
        tokens, _ = self._views(bs)
        ctx = self.contexts[bs]
        if self.eager:  # rebuilt per forward, from this step's host lengths (prefix_lens_cpu)
            ctx.attn_metadata = self.attn_backend.prepare_metadata(ctx)
        if self.routed_experts is not None:
            ctx.moe_recorder = self.routed_experts.bind(ctx.out_cache_loc)
        input_ids = resolve_placeholders(tokens[_IDS], self.future_tokens)
        capture, model = self.hidden_capture, self.model
        if capture is not None:
            capture.begin(ctx)
        hidden = model(input_ids, ctx.positions, ctx)
        return (model.compute_logits(hidden),
                capture.collect(ctx, hidden) if capture is not None else None)

    @torch.inference_mode()
    def _capture(self) -> None:
        start = time.perf_counter()
        empty = np.zeros(0, dtype=np.int64)
        self.graphs, self.outputs = capture_per_size(
            self.sizes, self._run_model, self.device,
            lambda bs: self._stage(bs, empty, [], [], [], []))
        logger.info("captured verify CUDA graphs (%d rows per request) for batch sizes %s in "
                    "%.1fs", self.num_rows, self.sizes, time.perf_counter() - start)

    def can_run(self, host: HostBatch, logit_rows: Sequence[List[int]]) -> bool:
        """Whether `host` fits a captured verify graph (see the module docstring)."""
        n, lens = self.num_rows, host.extend_lens
        if host.tree_masks is not None or not lens or len(lens) > self.max_bs or max(lens) > n:
            return False
        if max(lens) == 1:
            return False  # a plain decode step: the decode graphs' work
        width = self.req_to_token.shape[1]
        return all(rows == list(range(k)) for rows, k in zip(logit_rows, lens)) and \
            all(p + n <= width for p in host.prefix_lens)

    def _stage(self, bs: int, index: np.ndarray, input_ids, out_cache_loc, rows, prefix) -> None:
        """Fills size bs's static inputs: the real rows at `index`, padding everywhere else."""
        n = self.num_rows
        staged = np.zeros(3 * bs * n + 3 * bs, dtype=np.int64)
        tokens, per_req = staged[:3 * bs * n].reshape(3, bs * n), staged[3 * bs * n:].reshape(3, bs)
        batch = len(rows)
        per_req[_ROWS, :batch] = rows
        per_req[_PREFIX, :batch] = prefix
        per_req[_SEQ] = per_req[_PREFIX] + n
        # every row, padding included, sits at prefix + its index (a chain's own positions)
        tokens[_POS] = (per_req[_PREFIX][:, None] + np.arange(n)).reshape(-1)
        tokens[_IDS, index] = input_ids
        tokens[_SLOTS, index] = out_cache_loc  # the padding rows keep slot 0
        self.inputs[bs].copy_(pinned(staged, self.device), non_blocking=True)
        if self.eager:  # the host's view of the lengths: only the eager path (torch_native) reads it
            self.contexts[bs].prefix_lens_cpu = per_req[_PREFIX].tolist()

    def replay(self, host: HostBatch) -> tuple:
        """Runs the verify forward of `host` (can_run was true): (logits [T, vocab] float32,
        the draft's hidden states [T, H] or None, row offsets per request), the T rows packed
        as the eager forward packs them (request i's rows from host.starts[i])."""
        lens = host.extend_lens
        batch = len(lens)
        bs = self.sizes[bisect.bisect_left(self.sizes, batch)]
        n = self.num_rows
        index = np.concatenate([i * n + np.arange(k, dtype=np.int64) for i, k in enumerate(lens)])
        self._stage(bs, index, host.input_ids, host.out_cache_loc, host.req_pool_indices,
                    host.prefix_lens)
        self.replays += 1
        logits, hidden = run_size(self, bs)
        pick = host_to_device(torch.from_numpy(index), self.device)
        offsets = np.concatenate([[0], np.cumsum(lens)]).tolist()
        return (logits.index_select(0, pick).float(),
                hidden.index_select(0, pick) if hidden is not None else None, offsets)
