"""Small helpers the model files share: parameter dtype, head size, sliding windows."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import torch


@contextmanager
def default_dtype(dtype: torch.dtype):
    """Parameters created inside get `dtype` (explicitly typed tensors are unaffected)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def head_dim_of(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


def sliding_window_of(hf_config, layer_id: int) -> Optional[int]:
    """The attention window of one layer, or None for full attention.

    Configs with `layer_types` (Qwen2/3) say per layer; Mistral applies its window everywhere.
    """
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None and layer_types[layer_id] != "sliding_attention":
        return None
    return window
