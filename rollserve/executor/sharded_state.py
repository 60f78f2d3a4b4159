"""Per-rank checkpoint files (SGLang's --load-format sharded_state), written by
`rollserve convert` (rollserve/convert.py): each rank of a large model opens only its own
file, holding exactly its parameters (padding included)."""

from __future__ import annotations

import json
import os
from typing import Iterator, Tuple

import torch

SHARDED_STATE = "sharded_state"
LAYOUT_FILE = "sharded_state.json"  # {"tp_size": N, "ep_size": 1 or N}: the files' layout


def rank_file(path: str, rank: int) -> str:
    return os.path.join(path, f"model-rank-{rank}-part-0.safetensors")


def iterate_rank_file(path: str, rank: int, tp_size: int,
                      ep_size: int = 1) -> Iterator[Tuple[str, torch.Tensor]]:
    """This rank's tensors; ValueError when the folder was cut for another tp_size / ep_size."""
    from safetensors import safe_open

    layout = os.path.join(path, LAYOUT_FILE)
    if not os.path.exists(layout):
        raise ValueError(f"{path} has no {LAYOUT_FILE}: not written by rollserve convert "
                         "(load_format sharded_state reads per-rank files)")
    with open(layout) as f:
        written = json.load(f)
    written_for = written.get("tp_size")
    if written_for != tp_size:
        raise ValueError(f"{path} was converted for tp_size {written_for}, not {tp_size}; run "
                         f"rollserve convert --model-parallel {tp_size}")
    if written.get("ep_size", 1) != ep_size:
        raise ValueError(f"{path} was converted for ep_size {written.get('ep_size', 1)}, not "
                         f"{ep_size}: serve it with --ep-size {written.get('ep_size', 1)}, or "
                         f"convert again ({'with' if ep_size > 1 else 'without'} --n-experts)")
    with safe_open(rank_file(path, rank), framework="pt", device="cpu") as shard:
        for name in shard.keys():
            yield name, shard.get_tensor(name)
