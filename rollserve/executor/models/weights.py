"""Maps HF checkpoint tensor names onto a model's parameters, fused projections included.

A FusedLinear named `...self_attn.qkv_proj` receives the checkpoint tensors
`...self_attn.q_proj.weight`, `...k_proj.weight`, `...v_proj.weight` (and biases),
each into its own block of rows.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from rollserve.executor.layers.linear import FusedLinear

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


def _destination(target: Target) -> torch.Tensor:
    param, rows = target
    return param.data if rows is None else param.data[rows]


def checkpoint_spec(targets: Dict[str, Target]) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
    return {name: (tuple(_destination(t).shape), t[0].dtype) for name, t in targets.items()}


@torch.no_grad()
def load_named_tensors(targets: Dict[str, Target], weights: Iterable[Tuple[str, torch.Tensor]],
                       skip: Callable[[str], bool], model_name: str) -> Set[str]:
    """Copies each (name, tensor) into place; returns the names loaded.

    Raises ValueError on an unknown name or a shape mismatch. Tensors before the
    offending one are already written: callers that need all-or-nothing validate
    the whole set against `checkpoint_spec` first.
    """
    loaded: Set[str] = set()
    for name, tensor in weights:
        if skip(name):
            continue
        target = targets.get(name)
        if target is None:
            raise ValueError(f"{model_name} has no parameter for checkpoint tensor {name!r}")
        dest = _destination(target)
        if tuple(tensor.shape) != tuple(dest.shape):
            raise ValueError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                             f"{model_name} expects {tuple(dest.shape)}")
        dest.copy_(tensor)
        loaded.add(name)
    return loaded
