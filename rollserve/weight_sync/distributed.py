"""A torch.distributed group between the trainer and the engine, for broadcasting weights.

The trainer is rank 0 and hosts the rendezvous store at master_address:master_port;
the engine's scheduler joins as rank `rank_offset` (one rank: no tensor parallelism
yet). The group is a process group of its own, with its own store, so it neither
needs nor disturbs a default group in either process. The store keys follow SGLang's
`init_custom_process_group` (PrefixStore(group_name) around the rendezvous store), so
SGLang's, verl's and slime's trainer helpers join it as they join SGLang. Backend: NCCL between GPUs,
gloo otherwise (gloo tensors live on the CPU and are copied to the model's device).

One update call is one bucket. Two layouts, chosen by `load_format`:
* None (SGLang's default): one broadcast per tensor, in the order of `names`.
* "flattened_bucket": the trainer packs the bucket into one uint8 buffer
  (`bucket_layout`: tensors in order, each start aligned to 64 bytes) and
  broadcasts it once; thousands of small tensors then cost one collective.
`broadcast_named_tensors` is the trainer's half of both.
"""

from __future__ import annotations

import datetime
import threading
import time
from concurrent.futures import Future
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

DEFAULT_GROUP_NAME = "weight_update_group"
BUCKET_ALIGN_BYTES = 64
INIT_TIMEOUT_S = 300.0  # both sides must join within this; collectives time out after it too
FLATTENED_BUCKET = "flattened_bucket"
LOAD_FORMATS = (None, FLATTENED_BUCKET)


def init_custom_process_group(backend: str, master_address: str, master_port: int,
                              world_size: int, rank: int, group_name: str = DEFAULT_GROUP_NAME,
                              timeout_s: float = INIT_TIMEOUT_S):
    """Join (rank 0: host) a new process group; blocks until all world_size ranks joined."""
    from torch.distributed.distributed_c10d import PrefixStore
    from torch.distributed.rendezvous import rendezvous

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    store, rank, world_size = next(rendezvous(f"tcp://{master_address}:{master_port}", rank,
                                              world_size, timeout=timeout))
    store.set_timeout(timeout)
    # SGLang's layout, which verl's and slime's trainer helpers share: the rendezvous store
    # wrapped in PrefixStore(group_name) before the group's own "<group_name>/" prefix, so
    # every key is "<group_name><group_name>/...". Both sides must agree or neither joins.
    store = PrefixStore(group_name, store)
    return group_on_store(backend, store, rank, world_size, group_name, timeout_s)


def check_group_args(master_address, master_port, rank_offset, world_size, group_name,
                     backend) -> Optional[str]:
    """Why these init_weights_update_group arguments cannot form a group, or None: nonsense
    is refused at once instead of waiting out a rendezvous that can never complete."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not isinstance(master_address, str) or not master_address.strip() or \
            len(master_address) > 253 or any(c.isspace() for c in master_address):
        return f"master_address must be a host name or IP address, got {master_address!r}"
    if not is_int(master_port) or not 1 <= master_port <= 65535:
        return f"master_port must be in 1..65535, got {master_port!r}"
    if not is_int(world_size) or world_size < 2:
        return f"world_size must be >= 2 (the trainer's ranks and this engine), got {world_size!r}"
    if not is_int(rank_offset) or not 1 <= rank_offset < world_size:
        return (f"rank_offset must be in 1..world_size-1 (rank 0 is the trainer, which hosts "
                f"the rendezvous), got {rank_offset!r}")
    if not isinstance(group_name, str) or not group_name or len(group_name) > 128:
        return f"group_name must be a non-empty string of at most 128 characters, got {group_name!r}"
    if backend not in (None, "gloo", "nccl"):
        return f"backend must be gloo or nccl, got {backend!r}"
    return None


def join_in_background(join: Callable[[], object], on_joined: Callable[[object], dict],
                       describe: str, timeout_s: float) -> Future:
    """Run a group join (which waits for the trainer) in a thread of its own, so that the
    scheduler keeps generating meanwhile; the future holds the control call's answer."""
    answer: Future = Future()

    def run():
        try:
            answer.set_result(on_joined(join()))
        except Exception as e:  # a trainer that never came, or refused the connection
            answer.set_result({"success": False, "message": (
                f"could not join {describe} within {timeout_s:.0f}s (--dist-timeout): "
                f"{type(e).__name__}: {e}")})

    threading.Thread(target=run, name=f"join {describe}", daemon=True).start()
    return answer


def group_on_store(backend: str, store, rank: int, world_size: int, group_name: str,
                   timeout_s: float = INIT_TIMEOUT_S):
    """A process group outside the default one, on a store both sides reach."""
    from torch.distributed.distributed_c10d import _new_process_group_helper, _world

    # NCCL's watchdog ends the whole process when a collective outlives the group's timeout;
    # the engine's receives give up at timeout_s (staged_receive.py) and abort the group
    # first, so NCCL's own limit is twice that. gloo's is the receives' limit itself.
    timeout = datetime.timedelta(seconds=timeout_s * (2 if backend == "nccl" else 1))
    # The same private helper SGLang and verl use for a group outside the default one.
    group, _ = _new_process_group_helper(world_size, rank, [], backend, store,
                                         group_name=group_name, timeout=timeout)
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def destroy_process_group(group) -> None:
    """Leave a group: a torch process group, or an NCCL communicator of rollserve's own
    (weight_sync/vllm_group.py), which has its own `release`."""
    release = getattr(group, "release", None)
    if release is not None:
        release()
    else:
        dist.destroy_process_group(group)


def post_broadcast(tensor: torch.Tensor, group, src: int):
    """Start one broadcast from group rank `src`; the returned work has is_completed() and
    wait() (wait_all). `group` is a torch process group, or a communicator of rollserve's own
    that posts its own (vLLM's group, weight_sync/vllm_group.py): the receives are the same."""
    own = getattr(group, "post_broadcast", None)
    if own is not None:
        return own(tensor, src)
    return dist.broadcast(tensor, group=group, group_src=src, async_op=True)


def destroy_group_with_engine(group, destroy_engine_side: Callable[[], dict]) -> dict:
    """The trainer's teardown: its rank and the engine's leave at the same time.

    NCCL's finalize waits for every rank of the communicator, so a trainer that first
    waits for the engine's destroy_weights_update_group answer and only then destroys
    its own side deadlocks. Returns the engine's answer.
    """
    answer: dict = {}
    engine_side = threading.Thread(target=lambda: answer.update(destroy_engine_side()))
    engine_side.start()
    destroy_process_group(group)
    engine_side.join()
    return answer


def parse_dtype(name) -> torch.dtype:
    """"bfloat16", "torch.bfloat16" or a torch.dtype -> torch.dtype."""
    if isinstance(name, torch.dtype):
        return name
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    numel = 1
    for n in shape:
        numel *= int(n)
    return numel * torch.empty((), dtype=dtype).element_size()


def bucket_layout(dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]]) -> Tuple[List[int], int]:
    """Byte offset of each tensor in a flattened bucket, and the bucket's size."""
    offsets, end = [], 0
    for dtype, shape in zip(dtypes, shapes):
        start = -(-end // BUCKET_ALIGN_BYTES) * BUCKET_ALIGN_BYTES
        offsets.append(start)
        end = start + _nbytes(dtype, shape)
    return offsets, end


def _views(buffer: torch.Tensor, offsets: List[int], dtypes, shapes) -> List[torch.Tensor]:
    return [buffer[start:start + _nbytes(dtype, shape)].view(dtype).view(tuple(shape))
            for start, dtype, shape in zip(offsets, dtypes, shapes)]


# ---- the trainer's side -------------------------------------------------------------------------
def broadcast_named_tensors(group, named_tensors: Sequence[Tuple[str, torch.Tensor]],
                            load_format=None, src: int = 0) -> None:
    """Send one bucket; run it while the engine runs update_weights_from_distributed with
    the same names, dtypes, shapes and load_format."""
    tensors = [t.detach() for _, t in named_tensors]
    if load_format == FLATTENED_BUCKET:
        dtypes, shapes = [t.dtype for t in tensors], [tuple(t.shape) for t in tensors]
        offsets, total = bucket_layout(dtypes, shapes)
        device = tensors[0].device if tensors else torch.device("cpu")
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        for view, t in zip(_views(buffer, offsets, dtypes, shapes), tensors):
            view.copy_(t)
        tensors = [buffer]
    elif load_format is not None:
        raise ValueError(f"load_format must be one of {LOAD_FORMATS}, got {load_format!r}")
    tensors = [t.contiguous() for t in tensors]
    works = [dist.broadcast(t, group=group, group_src=src, async_op=True) for t in tensors]
    for work in works:
        work.wait()


# ---- the engine's side ---------------------------------------------------------------------------
def check_shapes(shapes) -> List[Tuple[int, ...]]:
    """Each shape a list of ints >= 0 (a bool is no size), or ValueError naming the bad one."""
    parsed = []
    for i, shape in enumerate(shapes):
        if not isinstance(shape, (list, tuple)) or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError(f"shapes[{i}] must be a list of integers >= 0, got {shape!r}")
        parsed.append(tuple(shape))
    return parsed


def bucket_bytes(dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]],
                 load_format=None) -> int:
    """What receiving this bucket allocates (the flattened layout pads each tensor to 64 B)."""
    if load_format == FLATTENED_BUCKET:
        return bucket_layout(dtypes, shapes)[1]
    return sum(_nbytes(dtype, shape) for dtype, shape in zip(dtypes, shapes))


def receive_named_tensors(group, names: Sequence[str], dtypes: Sequence[torch.dtype],
                          shapes: Sequence[Sequence[int]], device: torch.device,
                          load_format=None, src: int = 0,
                          timeout_s: Optional[float] = None) -> List[Tuple[str, torch.Tensor]]:
    """Receive one bucket into fresh buffers on `device`. timeout_s: wait at most this long
    for the trainer (TimeoutError after; see wait_all)."""
    if load_format == FLATTENED_BUCKET:
        offsets, total = bucket_layout(dtypes, shapes)
        buffer = torch.empty(total, dtype=torch.uint8, device=device)
        wait_all([post_broadcast(buffer, group, src)], timeout_s)
        return list(zip(names, _views(buffer, offsets, dtypes, shapes)))
    tensors = [torch.empty(tuple(shape), dtype=dtype, device=device)
               for dtype, shape in zip(dtypes, shapes)]
    wait_all([post_broadcast(t, group, src) for t in tensors], timeout_s)
    return list(zip(names, tensors))


def wait_all(works: Sequence, timeout_s: Optional[float] = None, what: str = "the broadcast") -> None:
    """Wait for the collectives. A gloo wait blocks, and ends (raising) at the group's own
    timeout: pass None. An NCCL one only orders the current stream after the collective, so
    with timeout_s its end is polled on the CPU for at most that long (then TimeoutError:
    the collective is still posted, the group unusable)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for work in works:
        pause = 0.0001
        while deadline is not None and not work.is_completed():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} did not come within {timeout_s:g}s")
            time.sleep(pause)  # short at first (a broadcast under way), then every 2 ms
            pause = min(2 * pause, 0.002)
        work.wait()
