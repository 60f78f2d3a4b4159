"""A draft model's chain steps (one token per request per step) replayed from CUDA graphs, one
graph per batch size, as the target's decode steps are (executor/cuda_graph_runner.py).

Step k + 1 of a chain (scheduler/model_drafter.py) brings, per request, the previous draft
token at position seq_len - 1 + k, its scratch slot in the draft's KV pool, and the state the
previous step carried. The graph's inputs are one static int64 block [5, size] (ids,
positions, slots, request rows, sequence lengths) and a static [size, width] block of carried
states; its outputs are the draft's argmax ids (target vocabulary) and the state carried to
the next step. Padding rows read request row 0 up to length 1 and write the draft pool's
padding slot 0; their outputs are dropped. Attention metadata is fixed per size at capture.

The carried width is known from the first chain step, so the graphs are captured then (once),
and again after the target's graphs were recaptured or dropped (a memory resume moves the
weights the draft reads). `eager=True` (a device other than CUDA) runs the same step over
the same static buffers without capturing. Tree steps (topk > 1) and the draft's catch-up
forward after each target step (a variable number of tokens per request) run eager.
"""

from __future__ import annotations

import bisect
import logging
import time
from typing import Dict, List, Optional

import numpy as np
import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.cuda_graph_runner import capture_per_size, pinned, run_size

logger = logging.getLogger(__name__)

_IDS, _POS, _SLOTS, _ROWS, _SEQ = range(5)


class DraftGraphRunner:
    def __init__(self, model, pool, backend, req_to_token: torch.Tensor, sizes: List[int],
                 width: int, dtype: torch.dtype, device: torch.device, eager: Optional[bool] = None):
        self.model = model
        self.pool = pool
        self.backend = backend
        self.req_to_token = req_to_token
        self.sizes = sizes
        self.max_bs = sizes[-1]
        self.width = width
        self.device = torch.device(device)
        self.eager = self.device.type != "cuda" if eager is None else eager
        self.ints = {bs: torch.zeros(5, bs, dtype=torch.int64, device=self.device) for bs in sizes}
        for ints in self.ints.values():
            ints[_SEQ].fill_(1)
        self.states = {bs: torch.zeros(bs, width, dtype=dtype, device=self.device) for bs in sizes}
        self.contexts = {bs: self._context(bs) for bs in sizes}
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: Dict[int, tuple] = {}
        self.replays = 0  # chain steps run through this runner (tests)
        if not self.eager:
            self._capture()

    def _context(self, bs: int) -> ForwardContext:
        ints = self.ints[bs]
        metadata = None
        if not self.eager or self.backend.supports_cuda_graph:
            metadata = self.backend.capture_metadata(bs, self.pool.num_slots + 1 + self.max_bs)
        return ForwardContext(
            positions=ints[_POS], out_cache_loc=ints[_SLOTS], req_pool_indices=ints[_ROWS],
            req_to_token=self.req_to_token,
            prefix_lens=ints[_POS],  # one token each: its position is the KV before it
            extend_lens=torch.ones(bs, dtype=torch.int64, device=self.device), seq_lens=ints[_SEQ],
            extend_start_loc=torch.arange(bs, device=self.device), kv_pool=self.pool,
            prefix_lens_cpu=[0] * bs, extend_lens_cpu=[1] * bs, attn_backend=self.backend,
            attn_metadata=metadata)

    def _run_model(self, bs: int) -> tuple:
        ctx = self.contexts[bs]
        for_logits, carried = self.model(self.ints[bs][_IDS], ctx.positions, ctx, self.states[bs])
        return self.model.draft_ids(for_logits), carried

    @torch.inference_mode()
    def _capture(self) -> None:
        start = time.perf_counter()
        torch.cuda.synchronize(self.device)
        # captured while serving: other threads (grammar compiles) may touch CUDA meanwhile
        self.graphs, self.outputs = capture_per_size(self.sizes, self._run_model, self.device,
                                                     error_mode="thread_local")
        logger.info("captured draft chain-step CUDA graphs for batch sizes %s in %.1fs", self.sizes,
                    time.perf_counter() - start)

    def can_run(self, batch: int, carried: torch.Tensor) -> bool:
        return 0 < batch <= self.max_bs and carried.shape[-1] == self.width

    def step(self, rows: List[int], positions: List[int], tokens: List[int], slots: List[int],
             carried: torch.Tensor) -> tuple:
        """One chain step of len(rows) requests: (draft ids [B] on the device, carried [B, W]);
        the outputs are the graph's buffers, valid until the next step."""
        batch = len(rows)
        bs = self.sizes[bisect.bisect_left(self.sizes, batch)]
        staged = np.zeros((5, bs), dtype=np.int64)
        staged[_SEQ] = 1
        staged[_IDS, :batch] = tokens
        staged[_POS, :batch] = positions
        staged[_SLOTS, :batch] = slots
        staged[_ROWS, :batch] = rows
        staged[_SEQ, :batch] = staged[_POS, :batch] + 1
        self.ints[bs].copy_(pinned(staged, self.device), non_blocking=True)
        self.states[bs][:batch].copy_(carried)  # the padding rows keep whatever they held
        if self.eager:  # the host's view of the lengths: only the eager path (torch_native) reads it
            self.contexts[bs].prefix_lens_cpu = staged[_POS].tolist()
        self.replays += 1
        ids, out = run_size(self, bs)
        return ids[:batch], out[:batch]
