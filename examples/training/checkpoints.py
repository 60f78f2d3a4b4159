"""Checkpoints in Hugging Face format, and pushing the trainer's weights to the
running server: from a saved checkpoint (disk) or straight from memory (tensor)."""

from __future__ import annotations

import os
import re
import shutil
from typing import List

from rollserve.rollout import RolloutClient

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TENSOR_BUCKET_BYTES = 64 << 20  # the request body limit is raised to fit one bucket


def save_checkpoint(model, tokenizer, out_dir: str, step: int, keep: int) -> str:
    """out_dir/checkpoint-{step} (safetensors, config, tokenizer); keeps the newest `keep`."""
    path = os.path.join(out_dir, f"checkpoint-{step}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for old in _checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    return path


def remove_old_checkpoints(out_dir: str) -> None:
    """A run starts from step 1: checkpoints left by an earlier run in the same folder
    would be mistaken for newer ones."""
    stale = _checkpoints(out_dir)
    if stale:
        print(f"removing {len(stale)} checkpoint(s) of an earlier run in {out_dir}", flush=True)
    for name in stale:
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)


def _checkpoints(out_dir: str) -> List[str]:
    names = [n for n in os.listdir(out_dir) if CHECKPOINT.match(n)]
    return sorted(names, key=lambda n: int(CHECKPOINT.match(n).group(1)))


def sync_weights(client: RolloutClient, model, mode: str, checkpoint: str, version: str,
                 group=None) -> dict:
    """Every replica serves `version` afterwards; raises RolloutError if refused.
    `group`: the DistributedSync of --sync distributed."""
    if mode == "disk":
        return client.update_weights_from_disk(checkpoint, weight_version=version)
    # only what training changes: a partial update is allowed
    named = [(name, p.detach()) for name, p in model.named_parameters() if p.requires_grad]
    if mode == "tensor":
        return client.update_weights_from_tensors(named, weight_version=version,
                                                  bucket_bytes=TENSOR_BUCKET_BYTES)
    if mode == "distributed":
        return group.push(named, version)
    raise ValueError(f"--sync must be disk, tensor or distributed, got {mode!r}")
