"""How a bucket of named tensors travels to update_weights_from_tensor.

One bucket is one string `"<format>:<payload>"`:

* `cuda_ipc:` + JSON: when every tensor is on a GPU. Each entry carries the CUDA
  IPC handle of the tensor's memory (what torch.multiprocessing would pickle), so
  a server process on the same machine maps the trainer's memory and copies from
  it on the device: no copy through the host. The sender must keep the tensors
  alive (and unchanged) until the update call returns.
* `safetensors:` + base64 of a safetensors blob: any other tensors (moved to
  the CPU first). The reader checks the header and every tensor's byte range, and
  returns tensors that view the blob (no copy; they are only read, into the model).
* `safetensors_file:` + a path: the same blob in a file the server maps (no copy
  through a socket). `local_bucket` makes one in /dev/shm for a server process on
  this machine (rollserve.Engine) and deletes it afterwards; reading a path gives a
  caller no power update_weights_from_disk does not give already.

No pickle is involved on either side: a payload cannot run code when it is read.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import mmap
import os
import tempfile
import warnings
from typing import Iterator, List, Sequence, Tuple

import torch

from rollserve.weight_sync.validate import SAFETENSORS_DTYPES

NamedTensors = Sequence[Tuple[str, torch.Tensor]]
SAFETENSORS = "safetensors"
SAFETENSORS_FILE = "safetensors_file"
CUDA_IPC = "cuda_ipc"
SHARED_MEMORY_DIR = "/dev/shm"


class PayloadError(ValueError):
    pass


def serialize_named_tensors(named_tensors: NamedTensors) -> str:
    """One bucket as a string for POST /update_weights_from_tensor."""
    _check_names(named_tensors)
    if named_tensors and all(t.is_cuda for _, t in named_tensors):
        return CUDA_IPC + ":" + json.dumps([_ipc_entry(n, t) for n, t in named_tensors])
    return SAFETENSORS + ":" + base64.b64encode(_safetensors_blob(named_tensors)).decode("ascii")


@contextlib.contextmanager
def local_bucket(named_tensors: NamedTensors) -> Iterator[str]:
    """One bucket for a server process on this machine, valid inside the `with`:
    CUDA IPC handles for GPU tensors, else a safetensors file in shared memory."""
    _check_names(named_tensors)
    if named_tensors and all(t.is_cuda for _, t in named_tensors):
        yield serialize_named_tensors(named_tensors)
        return
    from safetensors.torch import save_file

    shm = SHARED_MEMORY_DIR if os.access(SHARED_MEMORY_DIR, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="rollserve-bucket-", suffix=".safetensors", dir=shm)
    os.close(fd)
    try:
        save_file(_cpu_tensors(named_tensors), path)
        yield f"{SAFETENSORS_FILE}:{path}"
    finally:
        os.unlink(path)


def deserialize_named_tensors(payload: str) -> List[Tuple[str, torch.Tensor]]:
    """The tensors of one bucket; raises PayloadError on anything malformed."""
    if not isinstance(payload, str):
        raise PayloadError(f"a serialized bucket is a string, got {type(payload).__name__}")
    kind, sep, _ = payload[:32].partition(":")
    if not sep:
        raise PayloadError("a serialized bucket must start with 'safetensors:', "
                           "'safetensors_file:' or 'cuda_ipc:'")
    body = payload[len(kind) + 1:]
    if kind == SAFETENSORS:
        return _load_safetensors(_b64decode(body))
    if kind == SAFETENSORS_FILE:
        return _load_safetensors(_map_file(body))
    if kind == CUDA_IPC:
        return _load_ipc(body)
    raise PayloadError(f"unknown bucket format {kind!r}")


def _check_names(named_tensors: NamedTensors) -> None:
    seen = set()
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name!r}: expected a torch.Tensor, got {type(tensor).__name__}")
        if name in seen:
            raise ValueError(f"tensor {name!r} appears twice in one bucket")
        seen.add(name)


# ---- host bytes (safetensors) ------------------------------------------------------------------
def _cpu_tensors(named_tensors: NamedTensors) -> dict:
    storages, tensors = set(), {}
    for name, tensor in named_tensors:
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():  # safetensors refuses tensors that share memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t
    return tensors


def _safetensors_blob(named_tensors: NamedTensors) -> bytes:
    from safetensors.torch import save

    return save(_cpu_tensors(named_tensors))


def _map_file(path: str) -> memoryview:
    try:
        with open(path, "rb") as f:  # populate: fault every page in at once, not one by one
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            return memoryview(mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ))
    except (OSError, ValueError) as e:  # missing, unreadable or empty
        raise PayloadError(f"the bucket file {path!r} cannot be mapped: {e}") from e


def _b64decode(body: str) -> bytes:
    try:
        return base64.b64decode(body, validate=True)
    except ValueError as e:  # binascii.Error, or non-ASCII text
        raise PayloadError(f"the safetensors bucket is not valid base64 (ASCII): {e}") from e


def _load_safetensors(blob: bytes) -> List[Tuple[str, torch.Tensor]]:
    """Tensors viewing the blob's bytes (no copy): read-only, valid while the blob lives."""
    try:
        header, data = _safetensors_header(blob)
        out = []
        for name, entry in header.items():
            if name != "__metadata__":
                out.append((name, _tensor_at(data, entry)))
        return out
    except PayloadError:
        raise
    except Exception as e:  # bad JSON, missing keys, wrong types
        raise PayloadError(f"the safetensors bucket cannot be read: {type(e).__name__}: {e}") from e


def _safetensors_header(blob: bytes):
    view = memoryview(blob)
    if len(view) < 8:
        raise PayloadError("the safetensors bucket cannot be read: shorter than its header size")
    size = int.from_bytes(view[:8], "little")
    if 8 + size > len(view):
        raise PayloadError("the safetensors bucket cannot be read: truncated header")
    header = json.loads(bytes(view[8:8 + size]))
    if not isinstance(header, dict):
        raise PayloadError("the safetensors bucket cannot be read: the header is not an object")
    return header, view[8 + size:]


def _tensor_at(data: memoryview, entry: dict) -> torch.Tensor:
    dtype = SAFETENSORS_DTYPES.get(entry["dtype"])
    shape = [int(n) for n in entry["shape"]]
    begin, end = (int(x) for x in entry["data_offsets"])
    if dtype is None:
        raise PayloadError(f"the safetensors bucket cannot be read: dtype {entry['dtype']!r}")
    numel = math.prod(shape)
    if not 0 <= begin <= end <= len(data) or end - begin != numel * dtype.itemsize:
        raise PayloadError("the safetensors bucket cannot be read: data offsets out of bounds "
                           "(truncated?)")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():  # the buffer is read-only; the tensor is only copied from
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=dtype, offset=begin, count=numel).view(shape)


# ---- CUDA IPC handles -----------------------------------------------------------------------------
def _b64(value):
    return None if value is None else base64.b64encode(value).decode("ascii")


def _unb64(value):
    return None if value is None else base64.b64decode(value)


def _ipc_entry(name: str, tensor: torch.Tensor) -> dict:
    from torch.multiprocessing.reductions import reduce_tensor

    _, args = reduce_tensor(tensor.detach())
    (_cls, size, stride, offset, _storage_cls, dtype, device, handle, storage_size, storage_offset,
     _grad, rc_handle, rc_offset, event_handle, event_sync) = args
    return {"name": name, "size": list(size), "stride": list(stride), "offset": offset,
            "dtype": str(dtype).removeprefix("torch."), "device": device, "handle": _b64(handle),
            "storage_size_bytes": storage_size, "storage_offset_bytes": storage_offset,
            "ref_counter_handle": _b64(rc_handle), "ref_counter_offset": rc_offset,
            "event_handle": _b64(event_handle), "event_sync_required": event_sync}


def _load_ipc(body: str) -> List[Tuple[str, torch.Tensor]]:
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    try:
        entries = json.loads(body)
        out = []
        for e in entries:
            dtype = getattr(torch, e["dtype"])
            if not isinstance(dtype, torch.dtype):
                raise PayloadError(f"{e['name']!r}: unknown dtype {e['dtype']!r}")
            tensor = rebuild_cuda_tensor(
                torch.Tensor, torch.Size(e["size"]), tuple(e["stride"]), e["offset"],
                torch.storage.TypedStorage, dtype, e["device"], _unb64(e["handle"]),
                e["storage_size_bytes"], e["storage_offset_bytes"], False,
                _unb64(e["ref_counter_handle"]), e["ref_counter_offset"],
                _unb64(e["event_handle"]), e["event_sync_required"])
            out.append((e["name"], tensor))
        return out
    except PayloadError:
        raise
    except Exception as e:  # bad JSON, missing keys, or handles this process cannot open
        raise PayloadError(f"the cuda_ipc bucket cannot be opened: {type(e).__name__}: {e}") from e
