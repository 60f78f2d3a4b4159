"""Keeps the scheduler processes of one tensor-parallel replica in step.

Rank 0 alone talks to the front end (ZeroMQ). Before each step it hands every rank what it
received (`share_messages`), so all ranks add the same requests, abort the same ones and
run the same control calls in the same order; their schedulers, fed identically and
seeded identically, build the same batch, which the model's collectives need. Control-call
answers are combined on rank 0 (`combine_answers`): one rank's failure is the answer.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from typing import Any, List, Optional

from rollserve.executor.parallel_state import (all_gather_objects, broadcast_objects, gather_objects,
                                               group_rank, group_size, init_tensor_parallel,
                                               set_dp_attention, set_expert_parallel, set_moe_a2a)
from rollserve.scheduler.config import SchedulerConfig

logger = logging.getLogger(__name__)


def rank_device(device: str, rank: int, ranks_per_node: int, base_gpu_id: int) -> str:
    """This rank's device: consecutive CUDA devices from base_gpu_id on each node; CPU stays CPU."""
    if device != "cuda":  # cpu, or a device the operator named (cuda:N)
        return device
    return f"cuda:{base_gpu_id + rank % ranks_per_node}"


def join_tensor_parallel(config: SchedulerConfig, rank: int) -> SchedulerConfig:
    """Joins the replica's TP group as `rank`; returns the config with this rank's device."""
    ex = config.executor
    if ex.tp_size == 1 and (ex.device != "cuda" or ex.base_gpu_id == 0):
        return config  # one device, as the operator named it
    device = rank_device(ex.device, rank, ex.tp_size // ex.nnodes, ex.base_gpu_id)
    if ex.tp_size == 1:  # a data-parallel replica on its own device (--base-gpu-id)
        return dataclasses.replace(config, executor=dataclasses.replace(ex, device=device))
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(device)  # NCCL binds the current device
    init_tensor_parallel(rank, ex.tp_size, f"tcp://{ex.dist_init_addr}", device, ex.dist_timeout)
    set_expert_parallel(ex.ep_size)
    set_dp_attention(ex.dp_attention)
    set_moe_a2a(ex.moe_a2a)
    return dataclasses.replace(config, executor=dataclasses.replace(ex, device=device))


def with_shared_seed(config: SchedulerConfig) -> SchedulerConfig:
    """Every rank samples the same tokens only from the same seed: pick one for all of them
    when the operator gave none."""
    if config.executor.tp_size == 1 or config.random_seed is not None:
        return config
    return dataclasses.replace(config, random_seed=random.getrandbits(62))


def share_messages(received: Optional[List[Any]]) -> List[Any]:
    """Rank 0's messages of this round on every rank (rank 0 passes them, the others None)."""
    return broadcast_objects(received) if group_size() > 1 else received


def combine_answers(answer: dict) -> Optional[dict]:
    """The replica's answer to a control call that every rank ran: rank 0's when all agree
    on success, else the first failing rank's (named); None on the other ranks."""
    if group_size() == 1:
        return answer
    answers = gather_objects(answer)
    if group_rank() != 0:
        return None
    ok = [bool(a.get("success", True)) if isinstance(a, dict) else True for a in answers]
    if all(ok) or not any(ok) and len({str(a) for a in answers}) == 1:
        return answers[0]
    failing = ok.index(False)
    failed = dict(answers[failing])
    failed["message"] = f"tensor-parallel rank {failing}: {failed.get('message', '')}"
    return failed


def done_on_every_rank(done: List[bool]) -> List[bool]:
    """Per item, whether it is done on every rank (each rank passes its own flags, in the
    same order): a wait that ends at different steps on different ranks is taken together."""
    return [all(column) for column in zip(*all_gather_objects(done))] if done else done


class DiscardingSender:
    """What ranks other than 0 send their outputs to: rank 0 sends the replica's outputs,
    which are the same tokens, so the others drop theirs."""

    def send_pyobj(self, obj: Any) -> None:
        pass
