"""The trainer's half of TRL's weight pushes to rollserve (weight_sync/trainer_protocols.py
has the engine's), over torch.distributed: gloo between CPU processes, NCCL on CUDA.

TRL's own clients open their side with vLLM's PyNcclCommunicator, which needs vLLM
and a GPU; these helpers have the same names and arguments, so a CPU trainer (or a
test) plugs them in where TRL calls vLLM's:

* VLLMClient (TRL >= 1.x, vLLM's weight-transfer engine): `trainer_init(init_info)`
  for `vllm...nccl_common.trainer_init`, and `weight_sync.packed.packed_broadcast_producer`
  for vLLM's `packed_nccl_broadcast_producer`.
* `trl vllm-serve`'s client (TRL <= 0.2x): `LegacyCommunicator(host, port, rank,
  world_size)` for `PyNcclCommunicator(StatelessProcessGroup.create(...))`: it has
  `.broadcast(tensor, src)` and `.group.barrier()`.
"""

from __future__ import annotations

import datetime
from typing import Optional

import torch
import torch.distributed as dist

from rollserve.weight_sync import distributed
from rollserve.weight_sync.trainer_protocols import LEGACY_STORE_PREFIX, VLLM_GROUP


class TrainerEndpoint:
    """The trainer's end of vLLM's weight-transfer group (rank 0, hosts the rendezvous).
    `group` is the endpoint itself: TRL's close_communicator clears `group.store` and
    `group.socket`."""

    def __init__(self, process_group, backend: str):
        self.process_group = process_group
        self.backend = backend
        self.group = self
        self.store = None
        self.socket = None

    def close(self) -> None:
        if self.process_group is not None:
            distributed.destroy_process_group(self.process_group)
            self.process_group = None


def trainer_init(init_info: dict, backend: Optional[str] = None) -> TrainerEndpoint:
    """Open the trainer's side while the engine runs /init_weight_transfer_engine with the
    same init_info ({master_address, master_port, rank_offset, world_size})."""
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    _leave_group_named(VLLM_GROUP)  # TRL never destroys its side; a new init supersedes it
    group = distributed.init_custom_process_group(
        backend, init_info["master_address"], int(init_info["master_port"]),
        int(init_info["world_size"]), 0, VLLM_GROUP)
    return TrainerEndpoint(group, backend)


def _leave_group_named(name: str) -> None:
    from torch.distributed.distributed_c10d import _world

    for group, group_name in list(_world.pg_names.items()):
        if group_name == name:
            distributed.destroy_process_group(group)


class _StoreBarrier:
    def __init__(self, communicator: "LegacyCommunicator"):
        self.communicator = communicator

    def barrier(self) -> None:
        dist.barrier(group=self.communicator.process_group)


class LegacyCommunicator:
    """The trainer's end of `trl vllm-serve`'s group: the engine (rank 0) hosts the store at
    host:port, the trainer is the last rank."""

    def __init__(self, host: str, port: int, rank: int, world_size: int,
                 backend: Optional[str] = None,
                 timeout_s: float = distributed.INIT_TIMEOUT_S):
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        _leave_group_named("trl_communicator")
        store = dist.TCPStore(host, int(port), int(world_size), is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        self.process_group = distributed.group_on_store(
            backend, dist.PrefixStore(LEGACY_STORE_PREFIX, store), int(rank), int(world_size),
            "trl_communicator", timeout_s)
        self._store = store
        self.rank = int(rank)
        self.group = _StoreBarrier(self)

    def broadcast(self, tensor: torch.Tensor, src: int) -> None:
        dist.broadcast(tensor.contiguous(), group=self.process_group, group_src=src)

    def close(self) -> None:
        distributed.destroy_process_group(self.process_group)
