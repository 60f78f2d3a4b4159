"""Where the executor's tagged allocations (weights, KV cache) are made: a torch_memory_saver
region when --enable-memory-saver is on and usable, so release/resume_memory_occupation
(weight_sync/memory.py) can unmap them and map them back at the same addresses."""

from __future__ import annotations

import contextlib
import logging

import torch

logger = logging.getLogger(__name__)

WEIGHTS, KV_CACHE = "weights", "kv_cache"  # SGLang's memory tags


def _import_torch_memory_saver():
    try:
        from torch_memory_saver import torch_memory_saver
    except ImportError:
        return None
    return torch_memory_saver


class MemorySaver:
    """Where tagged allocations are made: a torch_memory_saver region when it is in use."""

    def __init__(self, enabled: bool, device: torch.device):
        self.tms = _import_torch_memory_saver() if enabled and device.type == "cuda" else None
        if enabled and self.tms is None:
            logger.warning("--enable-memory-saver: torch_memory_saver is not usable here "
                           "(%s); release/resume will free and re-allocate instead",
                           "not installed" if device.type == "cuda" else "not on CUDA")
        if self.tms is not None:
            try:  # the in-process allocator: no LD_PRELOAD needed; must be set before a region
                self.tms.hook_mode = "torch"
            except (AttributeError, AssertionError):  # versions without it, or already set up
                pass

    def region(self, tag: str):
        if self.tms is None:
            return contextlib.nullcontext()
        try:
            return self.tms.region(tag=tag, enable_cpu_backup=(tag == WEIGHTS))
        except TypeError:  # versions before CPU backup: released weights come back undefined
            logger.warning("this torch_memory_saver keeps no CPU backup: after a release of "
                           "'weights', push weights again before generating")
            return self.tms.region(tag=tag)
