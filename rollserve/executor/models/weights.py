"""Maps HF checkpoint tensor names onto a model's parameters, fused projections included.

A FusedLinear named `...self_attn.qkv_proj` receives the checkpoint tensors
`...self_attn.q_proj.weight`, `...k_proj.weight`, `...v_proj.weight` (and biases),
each into its own block of rows.

Under tensor parallelism a parameter holds one slice of its checkpoint tensor
(layers/parallel.py's CheckpointSlice, found by `checkpoint_slices`): the spec still
names the checkpoint's full shape, and loading copies only this rank's slice (read
lazily from the safetensors file when the loader passes slices instead of tensors).
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from rollserve.executor.layers.linear import FusedLinear
from rollserve.executor.layers.parallel import CheckpointSlice, local_slices, shape_of
from rollserve.executor.parallel_state import all_gather_objects

Target = Tuple[nn.Parameter, Optional[object]]  # parameter, index into it (None: all of it)


def checkpoint_targets(model: nn.Module) -> Dict[str, Target]:
    """HF checkpoint name -> where that tensor goes in `model`.

    A module with a `checkpoint_targets()` method (stacked MoE experts) names its own tensors:
    {name relative to the module: (parameter, index)}.
    """
    fused = {name: m for name, m in model.named_modules() if isinstance(m, FusedLinear)}
    custom = {name: m for name, m in model.named_modules()
              if name and callable(getattr(m, "checkpoint_targets", None))}
    targets: Dict[str, Target] = {}
    for prefix, module in custom.items():
        targets.update({f"{prefix}.{rel}": t for rel, t in module.checkpoint_targets().items()})
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in custom:
            continue
        if owner not in fused:
            targets[name] = (param, None)
            continue
        parent = owner.rpartition(".")[0]
        for shard, rows in fused[owner].shard_rows().items():
            targets[f"{parent}.{shard}.{leaf}" if parent else f"{shard}.{leaf}"] = (param, rows)
    return targets


def checkpoint_slices(model: nn.Module) -> Dict[str, CheckpointSlice]:
    """HF checkpoint name -> the slice of it this rank holds (empty on one rank)."""
    slices: Dict[str, CheckpointSlice] = {}
    for prefix, module in model.named_modules():
        own = local_slices(module)
        if not own:
            continue
        # a FusedLinear names its projections' tensors relative to its parent module
        base = prefix.rpartition(".")[0] if isinstance(module, FusedLinear) else prefix
        slices.update({f"{base}.{rel}" if base else rel: s for rel, s in own.items()})
    return slices


def _destination(target: Target) -> torch.Tensor:
    param, rows = target
    return param.data if rows is None else param.data[rows]


def full_tensor(model: nn.Module, name: str) -> torch.Tensor:
    """The checkpoint tensor `name` as the model holds it, whole: under TP the ranks' slices
    are gathered (every rank must ask, as control calls do). get_weights_by_name, checksums."""
    targets = getattr(model, "_targets", None) or checkpoint_targets(model)
    local = _destination(targets[name])
    part = (getattr(model, "_slices", None) or {}).get(name)
    if part is None:
        return local
    local = local.narrow(part.dim, 0, part.length)
    full = torch.empty(part.full_shape(tuple(local.shape)), dtype=local.dtype)
    for start, piece in all_gather_objects((part.start, local.detach().cpu())):
        full.narrow(part.dim, start, piece.shape[part.dim]).copy_(piece)  # replicas agree
    return full


def checkpoint_spec(targets: Dict[str, Target], slices: Optional[Dict[str, CheckpointSlice]] = None
                    ) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    slices = slices or {}

    def shape(name: str, target: Target) -> Tuple[int, ...]:
        local = tuple(_destination(target).shape)
        return slices[name].full_shape(local) if name in slices else local

    return {name: (shape(name, t), t[0].dtype) for name, t in targets.items()}


@torch.no_grad()
def load_named_tensors(targets: Dict[str, Target], weights: Iterable[Tuple[str, torch.Tensor]],
                       skip: Callable[[str], bool], model_name: str,
                       slices: Optional[Dict[str, CheckpointSlice]] = None) -> Set[str]:
    """Copies each (name, tensor) into place (this rank's slice of it under TP); returns the
    names loaded. A tensor may be a safetensors slice, read only where this rank needs it.

    Raises ValueError on an unknown name or a shape mismatch. Tensors before the
    offending one are already written: callers that need all-or-nothing validate
    the whole set against `checkpoint_spec` first.
    """
    slices = slices or {}
    loaded: Set[str] = set()
    for name, tensor in weights:
        if skip(name):
            continue
        target = targets.get(name)
        if target is None:
            raise ValueError(f"{model_name} has no parameter for checkpoint tensor {name!r}")
        dest = _destination(target)
        part = slices.get(name)
        expected = part.full_shape(tuple(dest.shape)) if part else tuple(dest.shape)
        if shape_of(tensor) != expected:
            raise ValueError(f"checkpoint tensor {name!r} has shape {shape_of(tensor)}, "
                             f"{model_name} expects {expected}")
        if part is not None:  # a padded vocabulary slice fills only its first rows
            dest = dest.narrow(part.dim, 0, part.length)
            tensor = part.take(tensor)
        elif not isinstance(tensor, torch.Tensor):
            tensor = tensor[:]
        dest.copy_(tensor)
        loaded.add(name)
    return loaded
