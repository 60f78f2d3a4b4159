"""The engine's end of vLLM's own weight-transfer group, joined without vLLM.

TRL's VLLMClient (with vLLM installed, on a GPU trainer) opens its end of the weight
push with vLLM's `trainer_init`: a `StatelessProcessGroup` (a torch TCPStore the trainer
hosts at master_address:master_port as rank 0) and a `PyNcclCommunicator` over it. What
the engine's end has to do, in vLLM's order (vLLM 0.33's distributed/utils.py,
device_communicators/pynccl.py, weight_transfer/nccl_common.py; unchanged since the
weight-transfer engine arrived):

1. connect to the store as a client counted in world_size (the trainer's store waits for
   every rank to connect before its constructor returns);
2. read the trainer's first `broadcast_obj`: key "broadcast_from/0/0", the pickle of
   vLLM's ctypes `ncclUniqueId` (128 bytes);
3. `ncclCommInitRank(world_size, id, rank)` on the engine's GPU, rank = rank_offset + the
   engine's local rank;
4. a one-element float32 sum all_reduce, the warm-up every PyNccl communicator runs right
   after init (skip it and the trainer's waits forever);
then every chunk of a push is one ncclBroadcast from rank 0 (packed.py has the layout).

Trust boundary: the id arrives pickled, and unpickling runs code named by the data. The
engine reads it only from the store at the address the caller of
/init_weight_transfer_engine named (the trainer), and only through UniqueIdUnpickler, which
builds nothing but the 128 id bytes: any other global (os.system, builtins.eval, any class)
is refused before it is looked up. Whoever may call that endpoint can still point the
engine's NCCL at a peer of their choice and push weights: keep it on a trusted network.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import logging
import pickle
import torch

from rollserve.weight_sync.distributed import wait_all
from rollserve.weight_sync.nccl_ctypes import UNIQUE_ID_BYTES, NcclCommunicator

logger = logging.getLogger(__name__)
UNIQUE_ID_KEY = "broadcast_from/0/0"  # StatelessProcessGroup.broadcast_obj: rank 0's first object
# where vLLM's ctypes class lives: the only class name a unique-id pickle may carry
UNIQUE_ID_CLASSES = {("vllm.distributed.device_communicators.pynccl_wrapper", "ncclUniqueId")}
MAX_PICKLE_BYTES = 4096  # the real one is about 250 bytes


class _UniqueIdClass:
    """What the unpickler hands out for vLLM's ncclUniqueId class: a marker, never a type
    anything can be built from."""


class _RebuiltId:
    """What only _rebuild_unique_id makes: plain bytes in a pickle are no id."""

    def __init__(self, raw: bytes):
        self.raw = raw


def _rebuild_unique_id(cls, state) -> _RebuiltId:
    """Stands in for ctypes' `_ctypes._unpickle(cls, (instance dict, raw bytes))`, the call a
    pickled ctypes Structure makes: returns the raw bytes, after checking they are an id."""
    if cls is not _UniqueIdClass:
        raise pickle.UnpicklingError("a ctypes object other than ncclUniqueId")
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict)
            and not state[0] and isinstance(state[1], bytes)):
        raise pickle.UnpicklingError("an ncclUniqueId pickle of an unknown layout")
    if len(state[1]) != UNIQUE_ID_BYTES:
        raise pickle.UnpicklingError(f"an ncclUniqueId of {len(state[1])} bytes, not "
                                     f"{UNIQUE_ID_BYTES}")
    return _RebuiltId(state[1])


class UniqueIdUnpickler(pickle.Unpickler):
    """Unpickles vLLM's pickled ncclUniqueId and nothing else (see the module's docstring)."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("_ctypes", "_unpickle"):
            return _rebuild_unique_id
        if (module, name) in UNIQUE_ID_CLASSES:
            return _UniqueIdClass
        raise pickle.UnpicklingError(f"refused to load {module}.{name} from the trainer's "
                                     f"store (only an ncclUniqueId may come from it)")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are refused")


def load_unique_id(raw: bytes) -> bytes:
    """The 128 bytes of a pickled ncclUniqueId, or pickle.UnpicklingError."""
    if len(raw) > MAX_PICKLE_BYTES:
        raise pickle.UnpicklingError(f"{len(raw)} bytes is no ncclUniqueId pickle")
    try:
        value = UniqueIdUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as e:  # truncated or garbled data
        raise pickle.UnpicklingError(f"not a pickle: {type(e).__name__}: {e}") from e
    if not isinstance(value, _RebuiltId):
        raise pickle.UnpicklingError(f"the trainer's store held a {type(value).__name__}, "
                                     f"not an ncclUniqueId")
    return value.raw


def decode_unique_id_b64(text) -> bytes:
    """vLLM's torch-free rendezvous (a JAX trainer, say): init_info's nccl_unique_id_b64 is
    the standard base64 (not URL-safe) of the 128 bytes the trainer's ncclGetUniqueId gave.
    ValueError naming the field when it is anything else."""
    if not isinstance(text, str) or not text:
        raise ValueError("nccl_unique_id_b64 must be a non-empty base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("nccl_unique_id_b64 is not standard base64 (URL-safe base64 is "
                         "not accepted)") from None
    if len(raw) != UNIQUE_ID_BYTES:
        raise ValueError(f"nccl_unique_id_b64 must decode to {UNIQUE_ID_BYTES} bytes, got "
                         f"{len(raw)}")
    return raw


def fetch_unique_id(master_address: str, master_port: int, world_size: int,
                    timeout_s: float) -> bytes:
    """Steps 1 and 2: connect to the trainer's store and read the id it broadcast. The store
    client is dropped after: vLLM's trainer uses its store for nothing else here."""
    from torch.distributed import TCPStore

    store = TCPStore(master_address, int(master_port), int(world_size), is_master=False,
                     timeout=datetime.timedelta(seconds=timeout_s), wait_for_workers=True)
    try:
        return load_unique_id(store.get(UNIQUE_ID_KEY))  # waits for the key, to timeout_s
    finally:
        del store


class VllmGroup:
    """The joined group: what staged_receive.GroupReceiver and distributed's receives use
    (post_broadcast, abort, release), on an NCCL communicator of rollserve's own."""

    def __init__(self, communicator: NcclCommunicator):
        self.communicator = communicator
        self.rank, self.world_size = communicator.rank, communicator.world_size

    def post_broadcast(self, tensor: torch.Tensor, src: int):
        return self.communicator.post_broadcast(tensor, src)

    def abort(self) -> None:
        self.communicator.abort()

    def release(self) -> None:
        self.communicator.abort()


def join_vllm_group(master_address: str, master_port: int, rank_offset: int, world_size: int,
                    device: torch.device, timeout_s: float, local_rank: int = 0,
                    fetch=fetch_unique_id) -> VllmGroup:
    """Steps 1 to 4 (blocks until the trainer has joined too; run it beside generation)."""
    rank = int(rank_offset) + int(local_rank)
    if not 0 < rank < int(world_size):
        raise ValueError(f"rank {rank} (rank_offset + local rank) is outside 1..world_size-1")
    if device.type != "cuda":
        raise ValueError(f"vLLM's weight-transfer group is NCCL, and this engine runs on {device}")
    unique_id = fetch(master_address, master_port, world_size, timeout_s)
    communicator = NcclCommunicator(unique_id, rank, int(world_size), device)
    try:
        with torch.cuda.device(device):
            warm_up = torch.zeros(1, dtype=torch.float32, device=device)
            wait_all([communicator.all_reduce_sum(warm_up)], timeout_s,
                     "the warm-up all_reduce vLLM's trainer runs after init")
    except Exception:
        communicator.abort()
        raise
    logger.info("joined vLLM's weight-transfer group at %s:%s as rank %d of %d (NCCL %d)",
                master_address, master_port, rank, world_size, communicator.nccl.version())
    return VllmGroup(communicator)
