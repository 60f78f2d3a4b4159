"""Decode steps replayed from CUDA graphs, one graph per captured batch size.

A decode batch of B requests runs the graph of the smallest captured size >= B;
the padding rows read request row 0 up to length 1 and write the KV pool's
padding slot 0, and their logits are dropped. The graph's inputs are one static
int64 block [5, size] per size (input ids, positions, KV slots, request rows,
sequence lengths) filled by a single non-blocking copy; attention metadata is fixed per
size at capture (Triton decode kernel, split count from the size), so nothing in
the captured region reads the host. The flashinfer backend instead plans its wrappers
on the host before each replay, writing into buffers the graph reads.

With a draft model (executor/draft_runner.py) the graphs also return every row's hidden states
for the draft (`hidden_capture`), so such steps replay graphs too. `eager=True` (what a device
other than CUDA gets) runs the same forward over the same static buffers without capturing:
the staging, padding and un-padding are then exercised on CPU (tests/executor/).
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from rollserve.executor.forward_batch import HostBatch, resolve_placeholders
from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.config import ExecutorConfig
from rollserve.executor.kv_pool import KVPool

logger = logging.getLogger(__name__)

DEFAULT_MAX_BS = 512  # the 8B ShareGPT-like run peaks near 1000 running requests; 512 was 8% faster than 256 (H200)
_INPUT_IDS, _POSITIONS, _SLOTS, _ROWS, _SEQ_LENS = range(5)


def capture_sizes(max_bs: int, explicit: Optional[List[int]] = None) -> List[int]:
    """The batch sizes to capture: `explicit` as given, else 1, 2, 4, 8, then steps of 8 to 64,
    of 16 to 256 and of 32 beyond, up to max_bs (always included)."""
    if explicit:
        return sorted(set(explicit))
    sizes = [1, 2, 4, 8] + list(range(16, 65, 8)) + list(range(80, 257, 16)) + list(range(288, max_bs + 1, 32))
    return sorted({s for s in sizes if s < max_bs} | {max_bs})


class CudaGraphRunner:
    def __init__(self, model, kv_pool: KVPool, req_to_token: torch.Tensor, future_tokens: torch.Tensor,
                 attn_backend: AttentionBackend, sizes: List[int], compile_max_bs: int = 0,
                 routed_experts=None, hidden_capture=None, eager: Optional[bool] = None):
        self.model = model
        self.hidden_capture = hidden_capture  # a draft model's HiddenCapture, or None
        self.eager = future_tokens.device.type != "cuda" if eager is None else eager
        # executor/routed_experts.py's store: captured writing into each size's static slots
        self.routed_experts = routed_experts
        self.kv_pool = kv_pool
        self.req_to_token = req_to_token
        self.future_tokens = future_tokens  # the runner's latest sampled token per request row
        self.attn_backend = attn_backend
        self.sizes = sizes
        self.max_bs = sizes[-1]
        self.device = future_tokens.device
        self.inputs = {bs: self._empty_inputs(bs) for bs in sizes}
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, tuple] = {}  # (logits, hidden states for the draft or None)
        self.replays = 0  # forwards run through this runner (tests, benchmarks)
        self.contexts = {bs: self._context(bs, self._metadata(bs)) for bs in sizes}
        self.forward_fns = {bs: self._forward_fn(bs <= compile_max_bs) for bs in sizes}
        if not self.eager:
            self._capture()

    def _metadata(self, bs: int):
        """The attention metadata of size bs, fixed at capture (backends that plan_per_replay
        plan it again before each replay)."""
        max_slots = self.kv_pool.num_slots + 1 + self.max_bs
        if self.eager and not self.attn_backend.supports_cuda_graph:
            return None  # the eager path with a backend that needs none (torch_native on CPU)
        return self.attn_backend.capture_metadata(bs, max_slots)

    def _empty_inputs(self, bs: int) -> torch.Tensor:
        inputs = torch.zeros(5, bs, dtype=torch.int64, device=self.device)
        inputs[_SEQ_LENS].fill_(1)
        return inputs

    def _context(self, bs: int, metadata) -> ForwardContext:
        ints = self.inputs[bs]
        return ForwardContext(
            positions=ints[_POSITIONS], out_cache_loc=ints[_SLOTS], req_pool_indices=ints[_ROWS],
            req_to_token=self.req_to_token,
            # a decode token's position is the number of tokens before it in the pool
            prefix_lens=ints[_POSITIONS], extend_lens=torch.ones(bs, dtype=torch.int64, device=self.device),
            seq_lens=ints[_SEQ_LENS],
            extend_start_loc=torch.arange(bs, device=self.device), kv_pool=self.kv_pool,
            prefix_lens_cpu=[0] * bs, extend_lens_cpu=[1] * bs,
            attn_backend=self.attn_backend, attn_metadata=metadata)

    def _forward_fn(self, compiled: bool):
        model, capture = self.model, self.hidden_capture

        def decode(input_ids, positions, ctx):
            if capture is not None:
                capture.begin(ctx)
            hidden = model(input_ids, positions, ctx)
            return (model.compute_logits(hidden),
                    capture.collect(ctx, hidden) if capture is not None else None)

        if compiled:
            return torch.compile(decode, dynamic=False, fullgraph=False)
        return decode

    def _run_model(self, bs: int) -> tuple:
        input_ids = resolve_placeholders(self.inputs[bs][_INPUT_IDS], self.future_tokens)
        ctx = self.contexts[bs]
        if self.routed_experts is not None:
            ctx.moe_recorder = self.routed_experts.bind(ctx.out_cache_loc)
        return self.forward_fns[bs](input_ids, ctx.positions, ctx)

    @torch.inference_mode()
    def _capture(self) -> None:
        start = time.perf_counter()
        self.graphs, self.outputs = capture_per_size(
            self.sizes, self._run_model, self.device, lambda bs: self._plan(bs, [1] * bs))
        logger.info("captured decode CUDA graphs for batch sizes %s in %.1fs", self.sizes,
                    time.perf_counter() - start)

    def _plan(self, bs: int, seq_lens) -> None:
        """Backends that plan per batch on the host (flashinfer) plan for the inputs of size bs
        (seq_lens: bs ints, a list or an array)."""
        backend = self.attn_backend
        if backend.plans_per_replay:
            backend.prepare_for_replay(self.contexts[bs], np.asarray(seq_lens).tolist())

    def can_run(self, host: HostBatch, logit_rows_ok: bool) -> bool:
        return logit_rows_ok and len(host.extend_lens) <= self.max_bs and all(
            n == 1 for n in host.extend_lens)

    def replay(self, host: HostBatch) -> tuple:
        """Runs the decode step of `host` (every request one token): (logits [B, vocab], the
        draft's hidden states [B, H] or None).

        The returned tensors are the graph's output buffers: valid until the next replay."""
        batch = len(host.extend_lens)
        bs = self.sizes[bisect.bisect_left(self.sizes, batch)]
        staged = np.zeros((5, bs), dtype=np.int64)
        staged[_SEQ_LENS] = 1
        staged[_INPUT_IDS, :batch] = host.input_ids
        staged[_POSITIONS, :batch] = host.positions
        staged[_SLOTS, :batch] = host.out_cache_loc
        staged[_ROWS, :batch] = host.req_pool_indices
        staged[_SEQ_LENS, :batch] = host.positions + 1
        self.inputs[bs].copy_(pinned(staged, self.device), non_blocking=True)
        if self.eager:  # the host's view of the lengths: only the eager path (torch_native) reads it
            self.contexts[bs].prefix_lens_cpu = staged[_POSITIONS].tolist()
        self._plan(bs, staged[_SEQ_LENS])
        self.replays += 1
        logits, hidden = run_size(self, bs)
        return logits[:batch], hidden[:batch] if hidden is not None else None


def capture_per_size(sizes: List[int], run: Callable[[int], Any], device: torch.device,
                     prepare: Optional[Callable[[int], None]] = None,
                     error_mode: str = "global") -> Tuple[Dict[int, Any], Dict[int, Any]]:
    """Captures run(bs) for every size: (graphs, their outputs) by size. Largest first, so the
    smaller ones reuse its memory pool; each warmed twice outside the capture (Triton compiles,
    allocators); prepare(bs) first where the inputs need it."""
    graphs: Dict[int, Any] = {}
    outputs: Dict[int, Any] = {}
    pool = None
    for bs in reversed(sizes):
        if prepare is not None:
            prepare(bs)
        for _ in range(2):
            run(bs)
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, capture_error_mode=error_mode):
            outputs[bs] = run(bs)
        pool = graph.pool()
        graphs[bs] = graph
    torch.cuda.synchronize(device)
    return graphs, outputs


def run_size(runner, bs: int):
    """A graph runner's forward of size bs over its static inputs: the graph's replay (its
    output buffers), or in eager mode the same forward run now (runner._run_model)."""
    if runner.eager:
        return runner._run_model(bs)
    runner.graphs[bs].replay()
    return runner.outputs[bs]


def pinned(staged: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host integers to copy into a graph's static inputs without blocking (pinned on CUDA)."""
    src = torch.from_numpy(staged)
    return src.pin_memory() if device.type == "cuda" else src


def graph_sizes(config: ExecutorConfig, max_running_requests: int) -> List[int]:
    """The decode batch sizes to capture under `config` (empty: none fit)."""
    max_bs = min(config.cuda_graph_max_bs or DEFAULT_MAX_BS, max_running_requests)
    return [s for s in capture_sizes(max_bs, config.cuda_graph_bs) if s <= max_running_requests]
