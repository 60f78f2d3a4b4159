"""This process's place in its tensor-parallel group, and the collectives the model and the
scheduler process use (torch.distributed: NCCL on CUDA, gloo on CPU).

One scheduler process runs per TP rank. The model's layers ask `tp_rank()` / `tp_size()`
while they are built (how many heads, which rows of a projection), and call `all_reduce` /
`all_gather_last_dim` in their forward. The scheduler process uses the CPU group to share
what rank 0 received (`broadcast_objects`) and to combine control-call answers
(`gather_objects`). Without a group (tp_size 1) every call is the identity, so a one-device
server pays nothing.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)


@dataclass
class TPState:
    rank: int = 0
    size: int = 1
    group: Any = None  # tensors on the model's device (NCCL on CUDA, gloo on CPU)
    cpu_group: Any = None  # Python objects between the scheduler processes (always gloo)
    # expert parallel (--ep-size): 1, the MoE experts' own rows split like an MLP's, or
    # `size`, whole experts split over the same ranks (layers/moe_parallel.py)
    ep_size: int = 1
    # --enable-dp-attention: each rank runs attention (and dense layers) alone over its own
    # requests; only the MoE experts are split over the group (layers/moe_dp.py)
    dp_attention: bool = False
    # --moe-a2a-backend deepep (under DP attention, whole experts): each rank routes its own
    # tokens and sends each copy to its expert's rank (layers/moe_dispatch.py)
    moe_a2a: bool = False


_STATE = TPState()


def init_tensor_parallel(rank: int, size: int, init_method: str, device_type: str,
                         timeout_s: Optional[float] = None) -> TPState:
    """Joins the group of `size` ranks at `init_method` (tcp://host:port) as `rank`."""
    global _STATE
    if size == 1:
        _STATE = TPState()
        return _STATE
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s) if timeout_s else None
    kwargs = {"timeout": timeout} if timeout else {}
    dist.init_process_group(backend, init_method=init_method, world_size=size, rank=rank, **kwargs)
    group = dist.group.WORLD
    # NCCL moves device tensors only; the scheduler's messages travel over gloo beside it
    cpu_group = dist.new_group(backend="gloo", **kwargs) if backend == "nccl" else group
    _STATE = TPState(rank, size, group, cpu_group)
    logger.info("tensor-parallel rank %d of %d (%s) joined at %s", rank, size, backend, init_method)
    return _STATE


def destroy_tensor_parallel() -> None:
    global _STATE
    if _STATE.size > 1:
        import torch.distributed as dist

        dist.destroy_process_group()
    _STATE = TPState()


def tp_rank() -> int:
    """This rank's index for the split of attention, dense layers and the vocabulary (0 when
    attention is data-parallel: those are whole on every rank)."""
    return 0 if _STATE.dp_attention else _STATE.rank


def group_rank() -> int:
    """This scheduler process's index in its replica's group (the MoE split, the scheduler's
    own collectives, a trainer's weight group)."""
    return _STATE.rank


def group_size() -> int:
    return _STATE.size


def dp_attention() -> bool:
    return _STATE.dp_attention


def set_dp_attention(on: bool) -> None:
    """--enable-dp-attention: attention and dense layers whole on every rank (tp_size() reads
    1 to the layers), the MoE experts split over the group (group_size())."""
    _STATE.dp_attention = bool(on) and _STATE.size > 1


def ep_size() -> int:
    return _STATE.ep_size


def set_expert_parallel(size: int) -> None:
    """--ep-size: the MoE experts split whole over the TP ranks (size == tp_size), or not (1).
    SGLang also mixes the two (experts in ep_size groups, each group TP inside); that layout
    is refused here, with the reason."""
    if size not in (1, _STATE.size):
        raise ValueError(f"ep_size {size} must be 1 or equal to tp_size ({_STATE.size}): experts "
                         f"are split whole over all the ranks, or each expert's rows are")
    _STATE.ep_size = size


def moe_a2a() -> bool:
    return _STATE.moe_a2a


def set_moe_a2a(on: bool) -> None:
    """The all-to-all token dispatch: only where each rank has its own tokens (DP attention)
    and whole experts (ep_size == the group's size); set after both."""
    if on and not (_STATE.dp_attention and _STATE.ep_size == _STATE.size > 1):
        raise ValueError("moe_a2a_backend: the all-to-all dispatch needs --enable-dp-attention "
                         "and --ep-size equal to --tp-size (> 1)")
    _STATE.moe_a2a = bool(on)


def tp_size() -> int:
    """How many ranks split attention, dense layers and the vocabulary (1 under DP attention)."""
    return 1 if _STATE.dp_attention else _STATE.size


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum over the ranks, in place (the partial outputs of a row-parallel linear)."""
    if _STATE.size == 1:
        return t
    import torch.distributed as dist

    dist.all_reduce(t, group=_STATE.group)
    return t


def all_gather_counts(count: int) -> List[int]:
    """Every rank's token count of this forward, in rank order (DP attention: taken once per
    forward, by the runner, for all its MoE exchanges). Over the CPU group, before any of the
    forward's kernels: a device all-gather read back on the host would wait for the step
    still running on the GPU, which the overlap scheduler launches this one beside."""
    if _STATE.size == 1:
        return [count]
    import torch.distributed as dist

    mine = torch.tensor([count], dtype=torch.int64)  # a host tensor: one gloo collective
    counts = [torch.empty_like(mine) for _ in range(_STATE.size)]
    dist.all_gather(counts, mine, group=_STATE.cpu_group)
    return torch.cat(counts).tolist()


def all_gather_rows(x: torch.Tensor, sizes: List[int]) -> Tuple[torch.Tensor, slice]:
    """DP attention's MoE exchange: every rank's rows of `x` [T_r, H], in rank order, on every
    rank, and which of them are this rank's. `sizes`: every rank's row count
    (all_gather_counts); ranks hold different numbers (an idle rank none), so each pads to the
    largest for the collective."""
    if _STATE.size == 1:
        return x, slice(0, x.shape[0])
    import torch.distributed as dist

    most = max(sizes)
    padded = x.new_zeros(most, *x.shape[1:])
    padded[:x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(_STATE.size)]
    dist.all_gather(parts, padded, group=_STATE.group)
    start = sum(sizes[:_STATE.rank])
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]), slice(start, start + x.shape[0])


def all_to_all_counts(counts: torch.Tensor) -> torch.Tensor:
    """The all-to-all dispatch's first exchange: `counts` [size * n] holds n numbers for each
    rank (chunk r goes to rank r); returns [size * n], chunk r what rank r sent here."""
    if _STATE.size == 1:
        return counts
    import torch.distributed as dist

    out = torch.empty_like(counts)
    dist.all_to_all_single(out, counts.contiguous(), group=_STATE.group)
    return out


def all_to_all_rows(x: torch.Tensor, send: List[int], recv: List[int]) -> torch.Tensor:
    """Rows of `x` [sum(send), H] to the ranks, send[r] of them (in order) to rank r; returns
    [sum(recv), H], recv[r] rows from rank r in rank order. Uneven and zero sizes allowed."""
    if _STATE.size == 1:
        return x
    import torch.distributed as dist

    out = x.new_empty(sum(recv), *x.shape[1:])
    dist.all_to_all_single(out, x.contiguous(), output_split_sizes=recv,
                           input_split_sizes=send, group=_STATE.group)
    return out


def all_gather_last_dim(t: torch.Tensor) -> torch.Tensor:
    """Every rank's `t` side by side along the last dim, in rank order (vocab-parallel logits)."""
    if _STATE.size == 1:
        return t
    import torch.distributed as dist

    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(_STATE.size)]
    dist.all_gather(parts, t, group=_STATE.group)
    return torch.cat(parts, dim=-1)


def broadcast_tensor(t: torch.Tensor) -> torch.Tensor:
    """Rank 0's `t` on every rank of the attention group, in place (a draft model's proposals:
    ranks whose floating point rounded apart still verify the same drafts)."""
    if tp_size() == 1:
        return t
    import torch.distributed as dist

    dist.broadcast(t, src=0, group=_STATE.group)
    return t


def broadcast_objects(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled over the CPU group)."""
    if _STATE.size == 1:
        return obj
    import torch.distributed as dist

    box = [obj if _STATE.rank == 0 else None]
    dist.broadcast_object_list(box, src=0, group=_STATE.cpu_group)
    return box[0]


def gather_objects(obj: Any) -> Optional[List[Any]]:
    """Every rank's `obj`, in rank order, on rank 0; None on the other ranks."""
    if _STATE.size == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * _STATE.size if _STATE.rank == 0 else None
    dist.gather_object(obj, out, dst=0, group=_STATE.cpu_group)
    return out


# ---- how a dimension is split -----------------------------------------------------------------
def split_evenly(total: int, rank: int, size: int, what: str) -> Tuple[int, int]:
    """(start, length) of `rank`'s share of `total` items that must divide evenly."""
    if total % size:
        raise ValueError(f"{what} ({total}) is not divisible by tp_size {size}")
    per = total // size
    return rank * per, per


def kv_head_range(num_kv_heads: int, rank: int, size: int) -> Tuple[int, int]:
    """(first KV head, KV heads per rank). With more ranks than KV heads each head is
    replicated on size / num_kv_heads consecutive ranks (their query heads use it)."""
    if size <= num_kv_heads:
        return split_evenly(num_kv_heads, rank, size, "num_key_value_heads")
    if size % num_kv_heads:
        raise ValueError(f"tp_size {size} is neither a divisor nor a multiple of "
                         f"num_key_value_heads ({num_kv_heads})")
    return rank // (size // num_kv_heads), 1


def padded_share(total: int, rank: int, size: int) -> Tuple[int, int, int]:
    """(start, per-rank length, valid length) when `total` need not divide: every rank holds
    ceil(total / size) rows, the last ones partly (or wholly) padding."""
    per = -(-total // size)
    start = min(rank * per, total)
    return start, per, max(0, min(per, total - start))


def first_failing_rank(ok: bool) -> Optional[int]:
    """Every rank says whether its part succeeded; all learn the first rank that did not
    (None: all did). Weight updates write only when every rank's validation passed."""
    if _STATE.size == 1:
        return None if ok else 0
    import torch.distributed as dist

    flags: List[Any] = [None] * _STATE.size
    dist.all_gather_object(flags, bool(ok), group=_STATE.cpu_group)
    return next((r for r, f in enumerate(flags) if not f), None)


class as_rank:
    """Builds models as rank `rank` of `size` without a group (rollserve convert writes each
    rank's slices in one process): construction and loading only, no collective."""

    def __init__(self, rank: int, size: int, ep_size: int = 1, dp_attention: bool = False):
        self.state = TPState(rank, size, ep_size=ep_size, dp_attention=dp_attention)

    def __enter__(self) -> TPState:
        global _STATE
        self.previous, _STATE = _STATE, self.state
        return self.state

    def __exit__(self, *exc) -> None:
        global _STATE
        _STATE = self.previous


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order, on every rank (inspection paths, not the forward)."""
    if _STATE.size == 1:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * _STATE.size
    dist.all_gather_object(out, obj, group=_STATE.cpu_group)
    return out
