"""rollserve.Engine's weight-sync methods, with sglang.Engine's names and arguments.

A mixin of Engine (it needs `self._call` and `self.tokenizer_manager`). Updates
answer {success, message, num_paused_requests}; a refused update leaves the old
weights serving.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from rollserve.weight_sync import control
from rollserve.weight_sync.distributed import DEFAULT_GROUP_NAME
from rollserve.weight_sync.tensor_transport import local_bucket


class WeightSyncMixin:
    def update_weights_from_disk(self, model_path: str, load_format: Optional[str] = None,
                                 flush_cache: bool = True, abort_all_requests: bool = False,
                                 weight_version: Optional[str] = None,
                                 in_flight_requests: Optional[str] = None,
                                 in_flight_timeout: Optional[float] = None) -> dict:
        """Load a same-architecture checkpoint in place (validated whole first).
        in_flight_requests: None / "wait", "retract", "in_place", "restart", "abort"
        (weight_sync/service.py)."""
        return self._call(control.update_weights_from_disk(
            self.tokenizer_manager, model_path, load_format, flush_cache, abort_all_requests,
            weight_version, in_flight_requests, in_flight_timeout))

    def update_weights_from_tensor(self, named_tensors: Sequence[Tuple[str, torch.Tensor]],
                                   load_format: Optional[str] = None, flush_cache: bool = True,
                                   weight_version: Optional[str] = None,
                                   abort_all_requests: bool = False,
                                   in_flight_requests: Optional[str] = None,
                                   in_flight_timeout: Optional[float] = None) -> dict:
        """One bucket of (HF name, tensor) pairs; GPU tensors travel as CUDA IPC handles,
        CPU tensors through a file in shared memory. For a model in several buckets, call
        once per bucket with flush_cache=False and weight_version=None except the last, between
        pause_generation (mode "wait", "retract" or "in_place": what the requests in flight
        keep) and continue_generation, so that no step runs on half-updated weights."""
        with local_bucket(list(named_tensors)) as payload:
            return self._call(control.update_weights_from_tensor(
                self.tokenizer_manager, [payload], load_format, flush_cache, abort_all_requests,
                weight_version, in_flight_requests=in_flight_requests,
                in_flight_timeout=in_flight_timeout))

    def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                  world_size: int, group_name: str = DEFAULT_GROUP_NAME,
                                  backend: Optional[str] = None) -> dict:
        """Join the trainer's group (the trainer is rank 0 and must join at the same time).
        backend: "nccl" or "gloo"; None picks nccl on CUDA, gloo on CPU."""
        return self._call(control.init_weights_update_group(
            self.tokenizer_manager, master_address, master_port, rank_offset, world_size,
            group_name, backend))

    def update_weights_from_distributed(self, names: List[str], dtypes: List, shapes: List[List[int]],
                                        group_name: str = DEFAULT_GROUP_NAME,
                                        flush_cache: bool = True,
                                        weight_version: Optional[str] = None,
                                        load_format: Optional[str] = None,
                                        abort_all_requests: bool = False,
                                        in_flight_requests: Optional[str] = None,
                                        in_flight_timeout: Optional[float] = None) -> dict:
        """Receive one bucket the trainer broadcasts now (distributed.broadcast_named_tensors)."""
        return self._call(control.update_weights_from_distributed(
            self.tokenizer_manager, names, dtypes, shapes, group_name, flush_cache,
            abort_all_requests, weight_version, load_format, in_flight_requests, in_flight_timeout))

    def destroy_weights_update_group(self, group_name: str = DEFAULT_GROUP_NAME) -> dict:
        return self._call(control.destroy_weights_update_group(self.tokenizer_manager, group_name))

    def get_weights_by_name(self, name: str, truncate_size: int = 100) -> List[float]:
        """The first `truncate_size` values of the (flattened) parameter an HF name maps to."""
        result = self._call(control.get_weights_by_name(self.tokenizer_manager, name, truncate_size))
        if not result.get("success"):
            raise ValueError(result.get("message"))
        return result["values"]

    def release_memory_occupation(self, tags: Optional[List[str]] = None) -> dict:
        """Free the weights and/or KV pool (tags "weights", "kv_cache"; None: both) until
        resume_memory_occupation; requests wait meanwhile. See weight_sync/memory.py."""
        return self._call(control.release_memory_occupation(self.tokenizer_manager, tags))

    def resume_memory_occupation(self, tags: Optional[List[str]] = None) -> dict:
        return self._call(control.resume_memory_occupation(self.tokenizer_manager, tags))
