"""update_weights_from_disk: a same-architecture checkpoint loaded into the live model.

The whole checkpoint is validated from its headers first (validate.py); then the
files are streamed one at a time, one tensor at a time, into the parameters the
model already has (under tensor parallelism each rank reads only its slices). The KV pool is untouched and the extra memory at any moment
is one tensor read from disk (at most one shard).
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch

from rollserve.executor.parallel_state import tp_size
from rollserve.weight_sync.validate import CheckpointFile, check_tensor_infos, scan_checkpoint


def validate_checkpoint(model, model_path: str, load_format: str) -> List[CheckpointFile]:
    """Every file's headers against the model's spec; raises WeightUpdateError."""
    files = scan_checkpoint(model_path, load_format)
    infos = [info for f in files for info in f.tensors]
    check_tensor_infos(infos, model.checkpoint_spec(), model.skips_checkpoint_name,
                       type(model).__name__, require_all=True,
                       rename=getattr(model, "canonical_name", None))
    return files


def _stream(files: List[CheckpointFile]) -> Iterator[Tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    lazy = tp_size() > 1  # safetensors slices: models/weights.py reads this rank's rows only
    for f in files:
        if f.kind == "safetensors":
            with safe_open(f.path, framework="pt", device="cpu") as shard:
                for name in shard.keys():
                    yield name, (shard.get_slice(name) if lazy else shard.get_tensor(name))
        else:
            state = torch.load(f.path, map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()
            del state


def load_checkpoint_files(model, files: List[CheckpointFile]) -> int:
    """Copies every tensor of the validated files into the model; returns how many."""
    loaded = model.load_weights(_stream(files))
    return len(loaded)
