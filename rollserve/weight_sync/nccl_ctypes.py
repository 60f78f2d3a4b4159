"""An NCCL communicator of rollserve's own, over libnccl's C API through ctypes.

vLLM's trainer helpers (what TRL's VLLMClient calls to push weights) build a
communicator straight from libnccl (`ncclCommInitRank` with an `ncclUniqueId` passed
around out of band), not a torch.distributed group, so the engine's end must be a raw
NCCL communicator too: torch exposes no way to join a communicator from a unique id
it did not make. weight_sync/vllm_group.py does the rendezvous; this file only wraps
the few NCCL calls the engine's end makes:

    ncclCommInitRank   join, once every rank has the same unique id
    ncclAllReduce      the one-element warm-up vLLM's communicator runs right after init
    ncclBroadcast      every weight chunk, on the current torch CUDA stream
    ncclCommAbort      leaving (never waits on a trainer that is gone)

The library is the libnccl.so.2 torch's CUDA wheels bring (the nvidia-nccl-cu* package),
or the one named by ROLLSERVE_NCCL_SO_PATH / VLLM_NCCL_SO_PATH. Both ends should load
the same NCCL version: NCCL does not promise that mixed versions interoperate.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
import threading
from typing import Dict, List, Optional

import torch

logger = logging.getLogger(__name__)
UNIQUE_ID_BYTES = 128  # NCCL_UNIQUE_ID_BYTES in nccl.h
_SUM = 0  # ncclSum
# ncclDataType_t values of nccl.h, for the dtypes a weight push carries
_NCCL_DTYPES = {torch.int8: 0, torch.uint8: 1, torch.int32: 2, torch.int64: 4,
                torch.float16: 6, torch.float32: 7, torch.float64: 8, torch.bfloat16: 9,
                torch.float8_e4m3fn: 10}
ABORT_WAIT_S = 5.0


class UniqueId(ctypes.Structure):
    """nccl.h's `typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;`"""

    _fields_ = [("internal", ctypes.c_byte * UNIQUE_ID_BYTES)]

    @classmethod
    def from_bytes(cls, raw: bytes) -> "UniqueId":
        if len(raw) != UNIQUE_ID_BYTES:
            raise ValueError(f"an NCCL unique id is {UNIQUE_ID_BYTES} bytes, got {len(raw)}")
        uid = cls()
        ctypes.memmove(ctypes.addressof(uid), raw, UNIQUE_ID_BYTES)
        return uid


def library_candidates() -> List[str]:
    """Where libnccl.so.2 may be, most specific first: a path the user named, the NVIDIA
    wheel torch depends on, then the dynamic loader's own search (which also finds the copy
    torch has loaded already)."""
    named = [os.environ[v] for v in ("ROLLSERVE_NCCL_SO_PATH", "VLLM_NCCL_SO_PATH")
             if os.environ.get(v)]
    wheel = []
    try:
        spec = importlib.util.find_spec("nvidia.nccl")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        wheel.extend(sorted(glob.glob(os.path.join(folder, "lib", "libnccl.so*"))))
    torch_lib = os.path.join(os.path.dirname(torch.__file__), "lib")
    wheel.extend(sorted(glob.glob(os.path.join(torch_lib, "libnccl.so*"))))
    return named + wheel + ["libnccl.so.2"]


class NcclLibrary:
    """The NCCL functions the engine's end calls, with their C signatures."""

    _loaded: Dict[str, "NcclLibrary"] = {}
    _lock = threading.Lock()

    def __init__(self, path: str):
        self.path = path
        lib = ctypes.CDLL(path)
        c_int, c_size_t, ptr = ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p
        signatures = {
            "ncclGetVersion": (c_int, [ctypes.POINTER(c_int)]),
            "ncclGetErrorString": (ctypes.c_char_p, [c_int]),
            "ncclGetUniqueId": (c_int, [ctypes.POINTER(UniqueId)]),
            # ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank)
            "ncclCommInitRank": (c_int, [ctypes.POINTER(ptr), c_int, UniqueId, c_int]),
            # ncclAllReduce(sendbuff, recvbuff, count, datatype, op, comm, stream)
            "ncclAllReduce": (c_int, [ptr, ptr, c_size_t, c_int, c_int, ptr, ptr]),
            # ncclBroadcast(sendbuff, recvbuff, count, datatype, root, comm, stream)
            "ncclBroadcast": (c_int, [ptr, ptr, c_size_t, c_int, c_int, ptr, ptr]),
            "ncclCommAbort": (c_int, [ptr]),
        }
        self.fn = {}
        for name, (restype, argtypes) in signatures.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = restype, argtypes
            self.fn[name] = f

    @classmethod
    def load(cls) -> "NcclLibrary":
        """The first candidate that loads (ImportError naming them all if none does)."""
        errors = []
        with cls._lock:
            for path in library_candidates():
                if path in cls._loaded:
                    return cls._loaded[path]
                try:
                    cls._loaded[path] = cls(path)
                    return cls._loaded[path]
                except (OSError, AttributeError) as e:
                    errors.append(f"{path}: {e}")
        raise ImportError("no usable libnccl.so.2 (install torch's CUDA wheel, or name one in "
                          "ROLLSERVE_NCCL_SO_PATH): " + "; ".join(errors))

    def check(self, result: int, call: str) -> None:
        if result != 0:
            text = self.fn["ncclGetErrorString"](result)
            raise RuntimeError(f"{call} failed: NCCL error {result}: "
                               f"{text.decode(errors='replace') if text else '?'}")

    def version(self) -> int:
        out = ctypes.c_int()
        self.check(self.fn["ncclGetVersion"](ctypes.byref(out)), "ncclGetVersion")
        return out.value

    def new_unique_id(self) -> bytes:
        """A fresh id (what the rank hosting a communicator makes); used by tests."""
        uid = UniqueId()
        self.check(self.fn["ncclGetUniqueId"](ctypes.byref(uid)), "ncclGetUniqueId")
        return ctypes.string_at(ctypes.addressof(uid), UNIQUE_ID_BYTES)


def nccl_dtype(dtype: torch.dtype) -> int:
    if dtype not in _NCCL_DTYPES:
        raise ValueError(f"NCCL cannot broadcast {dtype} (vLLM's communicator refuses it too)")
    return _NCCL_DTYPES[dtype]


class Posted:
    """A collective queued on a stream: the same is_completed()/wait() a torch Work has, so
    distributed.wait_all polls it to its deadline."""

    def __init__(self, stream: torch.cuda.Stream):
        self.event = torch.cuda.Event()
        self.event.record(stream)

    def is_completed(self) -> bool:
        return self.event.query()

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.event)


class NcclCommunicator:
    """One rank of a communicator joined from a unique id, bound to one CUDA device."""

    def __init__(self, unique_id: bytes, rank: int, world_size: int, device: torch.device,
                 library: Optional[NcclLibrary] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size}")
        self.nccl = library or NcclLibrary.load()
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        if self.device.index is None:  # "cuda": the tensors it gets say cuda:<current>
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.comm = ctypes.c_void_p()
        # NCCL binds the communicator to the current device; ncclCommInitRank returns once
        # every rank has called it (it fails when the peer that made the id is gone)
        with torch.cuda.device(self.device):
            self.nccl.check(self.nccl.fn["ncclCommInitRank"](
                ctypes.byref(self.comm), world_size, UniqueId.from_bytes(unique_id), rank),
                "ncclCommInitRank")

    def _stream(self) -> torch.cuda.Stream:
        return torch.cuda.current_stream(self.device)

    def _check_tensor(self, tensor: torch.Tensor) -> None:
        if self.comm is None:
            raise RuntimeError("the NCCL communicator was closed")
        if tensor.device != self.device or not tensor.is_contiguous():
            raise ValueError(f"NCCL needs a contiguous tensor on {self.device}, got one on "
                             f"{tensor.device}")

    def all_reduce_sum(self, tensor: torch.Tensor) -> Posted:
        """In place, on the current stream."""
        self._check_tensor(tensor)
        stream = self._stream()
        self.nccl.check(self.nccl.fn["ncclAllReduce"](
            tensor.data_ptr(), tensor.data_ptr(), tensor.numel(), nccl_dtype(tensor.dtype), _SUM,
            self.comm, stream.cuda_stream), "ncclAllReduce")
        return Posted(stream)

    def post_broadcast(self, tensor: torch.Tensor, src: int) -> Posted:
        """Queue a broadcast from rank `src` into (or, on src, out of) `tensor` on the current
        stream; distributed.post_broadcast calls this for a group of this kind."""
        self._check_tensor(tensor)
        stream = self._stream()
        pointer = tensor.data_ptr()
        send = pointer if src == self.rank else None  # only the root's send buffer is read
        self.nccl.check(self.nccl.fn["ncclBroadcast"](
            send, pointer, tensor.numel(), nccl_dtype(tensor.dtype), src, self.comm,
            stream.cuda_stream), "ncclBroadcast")
        return Posted(stream)

    def abort(self) -> None:
        """Leave now, freeing a collective still waiting for its peer. ncclCommDestroy would
        first wait for queued work, which never ends when the trainer is gone; abort can
        itself wait on such work for a while, so it gets ABORT_WAIT_S in a thread of its own."""
        comm, self.comm = self.comm, None
        if comm is None:
            return
        nccl, device = self.nccl, self.device

        def run():
            with torch.cuda.device(device):
                result = nccl.fn["ncclCommAbort"](comm)
            if result != 0:
                logger.warning("ncclCommAbort returned NCCL error %d", result)

        worker = threading.Thread(target=run, daemon=True, name="nccl abort")
        worker.start()
        worker.join(ABORT_WAIT_S)

    release = abort  # distributed.destroy_process_group's name for leaving a group

