"""Checkpoint folders as trainers name them: which folders are checkpoints, their step,
the folder inside them that holds the HF weights, and the order a backlog is scored in.

Names (fullmatch, one group captures the step):
  transformers Trainer     checkpoint-500
  verl                     global_step_500       (HF weights, if saved, in actor/huggingface)
  OpenRLHF / DeepSpeed     global_step500        (DeepSpeed shards) and global_step500_hf (HF)
  others                   step_500
When several folders carry one step (OpenRLHF's global_step500 and global_step500_hf), the
watcher scores the one that holds HF weights (see watch.py).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

from rollserve.core.sampling_params import InvalidRequest

DEFAULT_PATTERNS = (r"checkpoint-(\d+)", r"global_step_?(\d+)", r"global_step_?(\d+)_hf",
                    r"step_(\d+)")
ORDERS = ("oldest", "newest")


def is_model_weight(name: str) -> bool:
    """A file the server loads as model weights: *.safetensors, else pytorch_model*.bin
    (its loader's rule, as transformers'). A Trainer's training_args.bin, rng_state.pth,
    optimizer.pt or scheduler.pt are not: a folder holding them and config.json but no
    model file yet is still being written, not a broken checkpoint."""
    return name.endswith(".safetensors") or (name.startswith("pytorch_model")
                                             and name.endswith(".bin"))


@dataclass(frozen=True)
class Checkpoint:
    step: int
    name: str  # the folder's name: the key results are recorded under
    path: str


def compile_patterns(patterns: Sequence[str]) -> List[re.Pattern]:
    compiled = []
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise InvalidRequest("pattern", f"{pattern!r} is not a regular expression: {e}")
        if regex.groups < 1:
            raise InvalidRequest("pattern", f"{pattern!r} needs a group that captures the step, "
                                            r"e.g. 'ckpt_(\d+)'")
        compiled.append(regex)
    return compiled


def step_of(name: str, patterns: Sequence[re.Pattern]) -> Optional[int]:
    """The step in a folder name, if the whole name matches one of the patterns."""
    for regex in patterns:
        match = regex.fullmatch(name)
        if match:
            value = match.groupdict().get("step") or match.group(1)
            if value is not None and value.isdigit():
                return int(value)
    return None


def discover(root: str, patterns: Sequence[re.Pattern], exclude: Sequence[str] = ()) -> List[Checkpoint]:
    """Checkpoint folders directly under root, by step."""
    skip = {os.path.realpath(p) for p in exclude}
    found = []
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for entry in entries:
        if not entry.is_dir() or os.path.realpath(entry.path) in skip:
            continue
        step = step_of(entry.name, patterns)
        if step is not None:
            found.append(Checkpoint(step, entry.name, os.path.abspath(entry.path)))
    return sorted(found, key=lambda c: (c.step, c.name))


def model_dir(path: str, max_depth: int = 3) -> str:
    """The folder holding config.json and weights: the checkpoint itself or, for
    trainers that nest it (e.g. global_step_N/actor/huggingface), a subfolder."""
    candidates = []
    for folder, dirs, names in os.walk(path):
        depth = os.path.relpath(folder, path).count(os.sep) + (folder != path)
        if depth > max_depth:
            dirs[:] = []
            continue
        if "config.json" in names and any(is_model_weight(n) for n in names):
            candidates.append((depth, folder))
    return min(candidates)[1] if candidates else path


def select(checkpoints: Sequence[Checkpoint], *, order: str = "oldest", every: int = 1,
           recorded: Iterable[tuple] = ()) -> List[Checkpoint]:
    """The checkpoints to score, in the order to score them.

    every=K keeps every K-th checkpoint by step, counted from the oldest step the watcher
    knows: those on disk and those already recorded (`recorded`: (step, name) pairs), so
    a trainer deleting old folders (save_total_limit) does not shift which ones are kept.
    Steps are counted, not folders: OpenRLHF's global_stepN and global_stepN_hf are one
    checkpoint, and both stay for the watcher to pick the one with HF weights.
    order='newest' scores a backlog from the latest step down."""
    if order not in ORDERS:
        raise InvalidRequest("order", f"must be one of {list(ORDERS)}, got {order!r}")
    if every < 1:
        raise InvalidRequest("every", "must be >= 1")
    chosen = list(checkpoints)
    if every > 1:
        known = sorted({c.step for c in checkpoints} | {step for step, _ in recorded})
        rank = {step: i for i, step in enumerate(known)}
        chosen = [c for c in chosen if rank[c.step] % every == 0]
    return sorted(chosen, key=lambda c: (c.step, c.name), reverse=order == "newest")
