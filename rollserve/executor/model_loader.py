"""Builds a model from an HF-format folder: config -> class -> weights, in the chosen dtype."""

from __future__ import annotations

import glob
import json
import logging
import os
from typing import Iterator, List, Tuple

import torch
from torch import nn

from rollserve.executor.layers.parallel import require_tensor_parallel
from rollserve.executor.models import get_model_class
from rollserve.executor.parallel_state import ep_size, tp_rank, tp_size
from rollserve.executor.sharded_state import SHARDED_STATE, iterate_rank_file

logger = logging.getLogger(__name__)

_DTYPES_BY_NAME = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16,
                   "float32": torch.float32, "float": torch.float32}
DUMMY_WEIGHT_SEED = 0
DUMMY_WEIGHT_STD = 0.02


def resolve_dtype(hf_config, dtype: str, device: str) -> torch.dtype:
    """"auto": float32 on CPU; on CUDA the config's dtype, with float32 served as bfloat16."""
    if dtype != "auto":
        if dtype not in _DTYPES_BY_NAME:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES_BY_NAME)}, got {dtype!r}")
        return _DTYPES_BY_NAME[dtype]
    if not str(device).startswith("cuda"):
        return torch.float32
    config_dtype = getattr(hf_config, "dtype", None) or getattr(hf_config, "torch_dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = _DTYPES_BY_NAME.get(config_dtype, getattr(torch, config_dtype, None))
    if config_dtype in (torch.float16, torch.bfloat16):
        return config_dtype
    return torch.bfloat16


def _safetensors_files(model_path: str) -> List[str]:
    index = os.path.join(model_path, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_path, s) for s in shards]
    # Some repos ship both model*.safetensors and a differently-named consolidated copy.
    return (sorted(glob.glob(os.path.join(model_path, "model*.safetensors")))
            or sorted(glob.glob(os.path.join(model_path, "*.safetensors"))))


def iterate_checkpoint(model_path: str, load_format: str = "auto",
                       lazy: bool = False) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields (name, CPU tensor) from every shard, one tensor at a time.

    Safetensors are preferred; pytorch_model*.bin is the fallback (load_format "pt" forces it).
    `lazy`: yield safetensors slices instead, valid until the next item, so that a
    tensor-parallel rank reads only its own rows (weights.load_named_tensors slices them).
    """
    from safetensors import safe_open

    files = _safetensors_files(model_path) if load_format in ("auto", "safetensors") else []
    if files:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as shard:
                for name in shard.keys():
                    yield name, (shard.get_slice(name) if lazy else shard.get_tensor(name))
        return
    bins = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin"))) \
        if load_format in ("auto", "pt") else []
    if not bins:
        raise FileNotFoundError(f"no {'safetensors' if load_format == 'safetensors' else 'weight'} "
                                f"files in {model_path} (load_format={load_format!r})")
    for path in bins:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        del state


@torch.no_grad()
def fill_dummy_weights(model: nn.Module, seed: int = DUMMY_WEIGHT_SEED) -> None:
    """Small normal weights and biases, norms at one: a runnable model without a checkpoint."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.fill_(1.0)
        else:
            param.normal_(0.0, DUMMY_WEIGHT_STD, generator=generator)


def load_model(model_path: str, dtype: torch.dtype, device: str, load_format: str = "auto",
               model_class_of=get_model_class) -> nn.Module:
    """Builds `model_class_of(hf_config)` on `device` and fills it (checkpoint or dummy)."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(model_path)
    model_cls = model_class_of(hf_config)
    require_tensor_parallel(model_cls, hf_config)
    with torch.device(device):
        model = model_cls(hf_config, dtype)
    if load_format == "dummy":
        fill_dummy_weights(model)
    elif load_format == SHARDED_STATE:
        _load_rank_file(model, model_path)
    else:
        loaded = model.load_weights(iterate_checkpoint(model_path, load_format, lazy=tp_size() > 1))
        missing = sorted(set(model.checkpoint_spec()) - loaded)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(f"checkpoint {model_path} lacks tensors {model_cls.__name__} needs: {shown}")
    logger.info("loaded %s (%s) from %s", model_cls.__name__, dtype, model_path)
    return model.eval()


def _load_rank_file(model: nn.Module, model_path: str) -> None:
    """sharded_state: this rank's own file, tensors already cut to its parameters."""
    from rollserve.executor.models.weights import load_named_tensors

    targets = getattr(model, "_targets", None)
    if targets is None or not getattr(model, "supports_tensor_parallel", False):
        raise ValueError(f"load_format sharded_state serves the decoder models that support "
                         f"tensor parallelism, not {type(model).__name__}")
    name = type(model).__name__
    loaded = load_named_tensors(targets, iterate_rank_file(model_path, tp_rank(), tp_size(),
                                                           ep_size()),
                                model.skips_checkpoint_name, name)
    missing = sorted(set(targets) - loaded)
    if missing:
        raise ValueError(f"{model_path} rank {tp_rank()} lacks tensors {name} needs: "
                         f"{', '.join(missing[:5])}")
