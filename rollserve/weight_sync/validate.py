"""Checks a set of named tensors against the model before anything is written.

Every weight update path (disk, tensor, distributed) describes what it is about
to load as `TensorInfo`s and calls `check_tensor_infos`; only when that passes
is a single parameter touched, so a refused update leaves the old weights whole.
A disk checkpoint is described from its safetensors headers alone (no tensor
data is read), which also catches truncated or corrupt files.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from rollserve.executor.model_loader import _safetensors_files

Spec = Dict[str, Tuple[Tuple[int, ...], torch.dtype]]  # name -> (shape, dtype), see checkpoint_spec
MAX_NAMES_SHOWN = 5

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
}


class WeightUpdateError(ValueError):
    """A weight update refused before any parameter was written; the message names why."""


@dataclass
class TensorInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: Optional[torch.dtype]  # None: a dtype torch does not know
    source: str  # where it comes from (a file, "bucket 2"), for messages


@dataclass
class CheckpointFile:
    path: str
    kind: str  # "safetensors" | "pt"
    tensors: List[TensorInfo]


def _names(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")


def check_tensor_infos(infos: Sequence[TensorInfo], spec: Spec, skip: Callable[[str], bool],
                       model_name: str, require_all: bool,
                       rename: Optional[Callable[[str], str]] = None) -> None:
    """Raises WeightUpdateError naming the first kind of problem found.

    Floating dtypes that differ from the parameter's are accepted (the copy casts,
    as SGLang does); a non-floating tensor for a floating parameter is refused.
    `require_all`: every tensor of `spec` must be present (a full checkpoint).
    """
    if rename is not None:  # a model that reads older checkpoint layouts (models/qwen2_vl.py)
        infos = [dataclasses.replace(info, name=rename(info.name)) for info in infos]
    seen: Dict[str, str] = {}
    for info in infos:
        if skip(info.name):
            continue
        if info.name in seen:
            raise WeightUpdateError(f"tensor {info.name!r} appears twice ({seen[info.name]} and "
                                    f"{info.source})")
        seen[info.name] = info.source
    extra = [n for n in seen if n not in spec]
    if extra:
        raise WeightUpdateError(f"{model_name} has no parameter for tensor(s) {_names(extra)} "
                                f"(in {seen[sorted(extra)[0]]})")
    if require_all:
        missing = [n for n in spec if n not in seen]
        if missing:
            raise WeightUpdateError(f"missing tensor(s) {_names(missing)} that {model_name} needs")
    for info in infos:
        if skip(info.name):
            continue
        shape, dtype = spec[info.name]
        if tuple(info.shape) != tuple(shape):
            raise WeightUpdateError(f"tensor {info.name!r} in {info.source} has shape "
                                    f"{tuple(info.shape)}, {model_name} expects {tuple(shape)}")
        if info.dtype is None or (dtype.is_floating_point and not info.dtype.is_floating_point):
            raise WeightUpdateError(f"tensor {info.name!r} in {info.source} has dtype "
                                    f"{info.dtype}, {model_name} expects a floating dtype ({dtype})")


# ---- describing a checkpoint folder -------------------------------------------------------
def scan_checkpoint(model_path: str, load_format: str = "auto") -> List[CheckpointFile]:
    """Name, shape and dtype of every tensor of every weight file, from headers only.

    Raises WeightUpdateError naming the folder or the file that cannot be read.
    """
    if not os.path.isdir(model_path):
        raise WeightUpdateError(f"model_path {model_path!r} is not a directory")
    if load_format not in ("auto", "safetensors", "pt"):
        raise WeightUpdateError(f"load_format must be auto, safetensors or pt, got {load_format!r}")
    files: List[str] = []
    if load_format in ("auto", "safetensors"):
        files = _listed_safetensors(model_path)
        if files:
            return [_scan_safetensors(path) for path in files]
    bins = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin"))) \
        if load_format in ("auto", "pt") else []
    if not bins:
        raise WeightUpdateError(f"no weight files in {model_path} (load_format={load_format!r})")
    return [_scan_pt(path) for path in bins]


def _listed_safetensors(model_path: str) -> List[str]:
    try:
        files = _safetensors_files(model_path)
    except (ValueError, KeyError) as e:  # an unreadable model.safetensors.index.json
        raise WeightUpdateError(f"model.safetensors.index.json in {model_path} is not valid: {e}")
    absent = [f for f in files if not os.path.isfile(f)]
    if absent:
        raise WeightUpdateError(f"weight file(s) listed in the index are missing: "
                                f"{_names([os.path.basename(f) for f in absent])}")
    return files


def _scan_safetensors(path: str) -> CheckpointFile:
    from safetensors import safe_open

    try:  # safe_open checks the header and that the file covers every tensor's bytes
        with safe_open(path, framework="pt", device="cpu") as shard:
            tensors = []
            for name in shard.keys():
                piece = shard.get_slice(name)
                tensors.append(TensorInfo(name, tuple(piece.get_shape()),
                                          SAFETENSORS_DTYPES.get(piece.get_dtype()),
                                          os.path.basename(path)))
    except Exception as e:
        raise WeightUpdateError(f"cannot read weight file {os.path.basename(path)} "
                                f"(truncated or corrupt?): {e}") from e
    return CheckpointFile(path, "safetensors", tensors)


def _scan_pt(path: str) -> CheckpointFile:
    try:  # mmap: tensor data stays on disk until it is copied
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise WeightUpdateError(f"cannot read weight file {os.path.basename(path)} "
                                f"(truncated or corrupt?): {e}") from e
    if not isinstance(state, dict):
        raise WeightUpdateError(f"weight file {os.path.basename(path)} holds no state dict")
    tensors = [TensorInfo(name, tuple(t.shape), t.dtype, os.path.basename(path))
               for name, t in state.items()]
    return CheckpointFile(path, "pt", tensors)
