"""release_memory_occupation / resume_memory_occupation: lend the engine's memory to a trainer.

Two tags: `weights` (every model parameter) and `kv_cache` (the KV pool's K and V
buffers). While any tag is released the scheduler runs no forward step: requests
that arrive wait in the queue and run after the resume. Releasing `kv_cache` first
sends running requests back to the queue (their tokens are kept and their KV is
recomputed after the resume) and empties the prefix cache.

What happens to the memory depends on where the engine runs:

* CUDA with --enable-memory-saver and torch_memory_saver installed: the weights and
  the KV pool were allocated inside torch_memory_saver regions; release unmaps their
  physical memory and resume maps it again at the same virtual addresses. The
  weights region keeps a CPU backup (their values come back); the KV pool's
  contents are discarded (the prefix cache was emptied anyway).
* CUDA otherwise (free and re-allocate): weights are copied to (pinned) host memory
  and their GPU storage freed; the KV buffers are freed; torch.cuda.empty_cache()
  hands the memory back to the driver. Resume allocates new tensors of the same
  shapes, so addresses change: the decode CUDA graphs (which captured the old
  addresses) are dropped at the release and captured again once every tag is back.
* CPU: weights are written to a temporary safetensors file and their RAM freed;
  resume reads them back into new tensors and deletes the file. The KV buffers are
  freed and re-allocated (zeroed) at the same size.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Dict, Iterable, List, Optional, Set

import torch

from rollserve.executor.memory_saver import KV_CACHE, WEIGHTS, MemorySaver
from rollserve.executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)

TAGS = (WEIGHTS, KV_CACHE)


def parse_tags(tags: Optional[Iterable[str]]) -> List[str]:
    """None -> every tag; otherwise the tags given, each one known."""
    if tags is None:
        return list(TAGS)
    tags = [tags] if isinstance(tags, str) else list(tags)
    unknown = [t for t in tags if t not in TAGS]
    if unknown:
        raise ValueError(f"unknown memory tag(s) {unknown}; the tags are {list(TAGS)}")
    return tags


class MemoryOccupation:
    """The scheduler process's record of what is released, and the release itself."""

    def __init__(self, runner: ModelRunner, saver: MemorySaver):
        self.runner = runner
        self.saver = saver
        self.released: Set[str] = set()
        self._weights_backup = None  # host copies (CUDA) or a file path (CPU)
        self._kv_shapes: Optional[List[torch.Size]] = None
        self._graphs_dropped = False

    def release(self, tag: str) -> None:
        if tag in self.released:
            return
        if self.saver.tms is not None:
            self.saver.tms.pause(tag)
        else:
            self._drop_graphs()  # they point at the memory freed below
            if tag == WEIGHTS:
                self._weights_backup = _offload_parameters(self.runner.model, self.runner.device)
            else:
                self._free_kv()
        self.released.add(tag)
        if self.runner.device.type == "cuda":
            torch.cuda.empty_cache()

    def resume(self, tag: str) -> None:
        if tag not in self.released:
            return
        if self.saver.tms is not None:
            self.saver.tms.resume(tag)
        elif tag == WEIGHTS:
            _restore_parameters(self.runner.model, self.runner.device, self._weights_backup)
            self._weights_backup = None
        else:
            self._allocate_kv()
        self.released.discard(tag)
        if not self.released and self._graphs_dropped:
            self.runner.capture_cuda_graphs()
            self._graphs_dropped = False

    def _drop_graphs(self) -> None:
        if self.runner.graph_runner is not None:
            self.runner.drop_cuda_graphs()
            self._graphs_dropped = True

    def _free_kv(self) -> None:
        pool = self.runner.kv_pool
        self._kv_shapes = [b.shape for b in pool.k_buffers + pool.v_buffers]
        empty = lambda: torch.empty(0, dtype=pool.dtype, device=pool.device)  # noqa: E731
        pool.k_buffers = [empty() for _ in pool.k_buffers]
        pool.v_buffers = [empty() for _ in pool.v_buffers]

    def _allocate_kv(self) -> None:
        pool = self.runner.kv_pool
        buffers = [torch.zeros(shape, dtype=pool.dtype, device=pool.device) for shape in self._kv_shapes]
        pool.k_buffers, pool.v_buffers = buffers[:pool.num_layers], buffers[pool.num_layers:]
        self._kv_shapes = None


def _offload_parameters(model: torch.nn.Module, device: torch.device):
    params = dict(model.named_parameters())
    if device.type == "cuda":
        backup: Dict[str, torch.Tensor] = {}
        for name, p in params.items():
            host = torch.empty(p.shape, dtype=p.dtype, pin_memory=True)
            host.copy_(p.data)
            backup[name] = host
    else:
        from safetensors.torch import save_file

        fd, backup = tempfile.mkstemp(prefix="rollserve-weights-", suffix=".safetensors")
        os.close(fd)
        save_file({name: p.data.contiguous() for name, p in params.items()}, backup)
    for p in params.values():
        p.data = torch.empty(0, dtype=p.dtype, device=p.device)
    return backup


def _restore_parameters(model: torch.nn.Module, device: torch.device, backup) -> None:
    params = dict(model.named_parameters())
    if isinstance(backup, dict):
        for name, p in params.items():
            p.data = backup[name].to(device, non_blocking=True)
        torch.cuda.synchronize(device)
        return
    from safetensors import safe_open

    with safe_open(backup, framework="pt", device="cpu") as f:
        for name, p in params.items():
            p.data = f.get_tensor(name)
    os.unlink(backup)
