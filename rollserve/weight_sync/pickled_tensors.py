"""SGLang's pickled update_weights_from_tensor payloads, for verl and slime, read only from
a trusted peer on this host (the server flag --trust-local-pickled-tensors, off by default).

verl's adapter sends `MultiprocessingSerializer.serialize(named_tensors)`: a
ForkingPickler pickle (base64) of [(name, tensor or LocalSerializedTensor)], where a
LocalSerializedTensor holds one such pickle per tensor-parallel rank. slime sends
load_format "flattened_bucket": a pickle of {"flattened_tensor": tensor, "metadata":
[FlattenedTensorMetadata(name, shape, dtype, start_idx, end_idx, numel)]}. The tensors
inside are not bytes but handles: CUDA IPC handles, or shared-memory segments for CPU
tensors, which only a process on the same machine can open.

Unpickling runs code chosen by whoever wrote the pickle, so it is never done for a
request the server cannot trust (api/weight_sync_routes.py checks the flag and that the
caller is on the loopback interface). Even then the unpickler admits only the classes
these payloads are made of (tensor and storage rebuilders, torch dtypes and sizes, the
fd-sharing handle, SGLang's two containers, mapped to rollserve's own stand-ins); any
other global is refused, so a payload cannot name os.system or a module of its own.
rollserve's pickle-free format (weight_sync/tensor_transport.py) stays the default.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import pickle
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from rollserve.weight_sync.tensor_transport import PayloadError

FLATTENED_BUCKET = "flattened_bucket"
OWN_PREFIXES = ("safetensors:", "safetensors_file:", "cuda_ipc:")


@dataclass
class FlattenedTensorMetadata:
    """Stands in for sglang.srt.weight_sync.tensor_bucket.FlattenedTensorMetadata."""

    name: str
    shape: Any
    dtype: Any
    start_idx: int
    end_idx: int
    numel: int


@dataclass
class LocalSerializedTensor:
    """Stands in for SGLang's LocalSerializedTensor: one pickled tensor per TP rank."""

    values: List[Any]


_REDUCTIONS = ("rebuild_tensor", "rebuild_cuda_tensor", "rebuild_typed_storage",
               "rebuild_typed_storage_child", "rebuild_storage_fd", "rebuild_storage_filename",
               "rebuild_storage_empty", "rebuild_event", "rebuild_nested_tensor",
               "rebuild_sparse_coo_tensor", "rebuild_meta_tensor")
_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}
_STANDINS = {
    ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata"): FlattenedTensorMetadata,
    ("sglang.srt.model_executor.model_runner", "LocalSerializedTensor"): LocalSerializedTensor,
    ("sglang.srt.model_executor.weight_updater", "LocalSerializedTensor"): LocalSerializedTensor,
    ("sglang.srt.utils", "LocalSerializedTensor"): LocalSerializedTensor,
    (__name__, "FlattenedTensorMetadata"): FlattenedTensorMetadata,  # rollserve's own senders
    (__name__, "LocalSerializedTensor"): LocalSerializedTensor,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _STANDINS:
            return _STANDINS[(module, name)]
        allowed = (
            (module == "torch.multiprocessing.reductions" and name in _REDUCTIONS)
            or (module == "torch" and (name in _DTYPES or name in ("Size", "Tensor", "device")))
            or (module == "torch.storage" and name in ("UntypedStorage", "TypedStorage"))
            or (module == "torch.nn.parameter" and name == "Parameter")
            or (module == "multiprocessing.resource_sharer" and name == "DupFd")
            or (module == "torch._utils" and name == "_rebuild_tensor_v2")
            or (module == "collections" and name == "OrderedDict")
        )
        if not allowed:
            raise PayloadError(f"the pickled payload names {module}.{name}, which is not part of "
                               "SGLang's tensor formats; refused")
        return super().find_class(module, name)


def is_pickled_payload(payload: Any) -> bool:
    """True for an SGLang (pickled) bucket, False for rollserve's own formats."""
    return not (isinstance(payload, str) and payload.startswith(OWN_PREFIXES))


def restricted_loads(payload: Any) -> Any:
    if isinstance(payload, str):
        try:
            payload = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise PayloadError(f"the pickled bucket is not valid base64: {e}") from e
    if not isinstance(payload, (bytes, bytearray)):
        raise PayloadError(f"a pickled bucket is base64 text or bytes, got {type(payload).__name__}")
    import torch.multiprocessing  # noqa: F401  (registers the storage rebuilders' sharing)

    try:
        return RestrictedUnpickler(io.BytesIO(payload)).load()
    except PayloadError:
        raise
    except Exception as e:  # truncated pickle, a handle that cannot be opened, ...
        raise PayloadError(f"the pickled bucket cannot be read: {type(e).__name__}: {e}") from e


def named_tensors_from_pickle(payload: Any, load_format: Optional[str],
                              rank: int = 0) -> List[Tuple[str, torch.Tensor]]:
    """One SGLang bucket as (name, tensor) pairs; a LocalSerializedTensor gives tensor-parallel
    rank `rank` its own value (the one on its device) when it holds one per rank."""
    obj = restricted_loads(payload)
    if load_format == FLATTENED_BUCKET:
        return _from_flattened_bucket(obj)
    if not isinstance(obj, (list, tuple)):
        raise PayloadError(f"expected a list of (name, tensor), got {type(obj).__name__}")
    out = []
    for i, item in enumerate(obj):
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)):
            raise PayloadError(f"item {i} is not a (name, tensor) pair")
        name, value = item
        if isinstance(value, LocalSerializedTensor):
            if not value.values:
                raise PayloadError(f"{name!r}: LocalSerializedTensor has no values")
            value = restricted_loads(value.values[rank if rank < len(value.values) else 0])
        if not isinstance(value, torch.Tensor):
            raise PayloadError(f"{name!r}: expected a tensor, got {type(value).__name__}")
        out.append((name, value))
    return out


def _from_flattened_bucket(obj: Any) -> List[Tuple[str, torch.Tensor]]:
    if not (isinstance(obj, dict) and "flattened_tensor" in obj and "metadata" in obj):
        raise PayloadError("a flattened_bucket is {flattened_tensor, metadata}")
    flat, metadata = obj["flattened_tensor"], obj["metadata"]
    if not isinstance(flat, torch.Tensor) or flat.dim() != 1:
        raise PayloadError("flattened_tensor must be a 1-d tensor")
    out = []
    for meta in metadata:
        if not isinstance(meta, FlattenedTensorMetadata):
            raise PayloadError(f"metadata entries must be FlattenedTensorMetadata, got "
                               f"{type(meta).__name__}")
        shape = tuple(int(n) for n in meta.shape)
        start, end = int(meta.start_idx), int(meta.end_idx)
        if not (0 <= start <= end <= flat.numel()) or end - start != math.prod(shape):
            raise PayloadError(f"{meta.name!r}: elements {start}:{end} do not fit shape {shape} "
                               f"in a bucket of {flat.numel()}")
        if not isinstance(meta.dtype, torch.dtype):
            raise PayloadError(f"{meta.name!r}: dtype {meta.dtype!r} is not a torch dtype")
        tensor = flat[start:end].reshape(shape)
        out.append((meta.name, tensor if tensor.dtype == meta.dtype else tensor.to(meta.dtype)))
    return out
