"""Has a checkpoint folder finished being written?

With a marker file (--marker): once the marker exists. Otherwise all of these:
* no file changed (name, size, mtime) between two looks, a poll interval apart;
* config.json (and every *.index.json) parses as JSON, and every shard an index names,
  or a `-0000K-of-0000N` file name implies, is there;
* every weight file is whole: a safetensors file holds all the bytes its header
  promises, a torch zip file has its end-of-archive record.
A writer that pauses mid-file passes the first test but not the last: its folder is
INCOMPLETE (an incomplete write, checked again once the folder changes), never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from rollserve.eval.checkpoints import Checkpoint, is_model_weight, model_dir
from rollserve.eval.layouts import not_scorable_reason

COMPLETE, CHANGING, NOT_READY = "complete", "changing", "not ready"
INCOMPLETE, NOT_SCORABLE = "incomplete", "not scorable"
SHARD_NAME = re.compile(r".*-(\d+)-of-(\d+)\.\w+")
MAX_HEADER_BYTES = 100 << 20  # safetensors refuses larger headers too


@dataclass(frozen=True)
class State:
    kind: str  # one of the constants above
    detail: str = ""  # why (INCOMPLETE, NOT_READY, NOT_SCORABLE)
    files: str = ""  # digest of the folder's files when judged


def fingerprint(path: str) -> tuple:
    """(relative path, size, mtime) of every file below `path`; () if there are none."""
    files = []
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:  # renamed away while we looked: not stable
                continue
            files.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(files))


def digest(files: tuple) -> str:
    """A short name for a fingerprint: rows record it, so a retry can tell whether the
    folder changed since the attempt."""
    return hashlib.sha1(repr(files).encode()).hexdigest()[:16]


def weight_file_problem(path: str) -> Optional[str]:
    """Why a weight file is not whole (an incomplete write), or None."""
    name = os.path.basename(path)
    size = os.path.getsize(path)
    if name.endswith(".safetensors"):
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{name} holds {size} bytes, not even its header length"
            header_len = struct.unpack("<Q", head)[0]
            if header_len > MAX_HEADER_BYTES:
                return f"{name} has no valid header (length {header_len})"
            if 8 + header_len > size:
                return f"{name} is cut short inside its header ({size:,} bytes)"
            try:
                header = json.loads(f.read(header_len))
            except ValueError:
                return f"{name} has an unreadable header"
        ends = [entry["data_offsets"][1] for key, entry in header.items()
                if key != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
        expected = 8 + header_len + max(ends, default=0)
        if size < expected:
            return f"{name} holds {size:,} of the {expected:,} bytes its header promises"
        return None
    if name.endswith((".bin", ".pt", ".pth")) and _starts_like_zip(path):
        if not zipfile.is_zipfile(path):  # torch.save's zip: the end record is written last
            return f"{name} is a zip archive without its end record ({size:,} bytes)"
    return None


def _starts_like_zip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def weights_state(path: str) -> Tuple[str, str]:
    """(COMPLETE, "") when config.json and whole weights are there; else (NOT_READY or
    INCOMPLETE, why)."""
    folder = model_dir(path)
    try:
        names = set(os.listdir(folder))
    except FileNotFoundError:
        return NOT_READY, "the folder is gone"
    weights = sorted(n for n in names if is_model_weight(n))
    if "config.json" not in names or not weights:
        return NOT_READY, "no config.json with weights"
    for meta in ["config.json"] + sorted(n for n in names if n.endswith(".index.json")):
        try:
            with open(os.path.join(folder, meta)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return INCOMPLETE, f"{meta} is not whole JSON"
        shards = set(data.get("weight_map", {}).values()) if meta != "config.json" else set()
        if not shards <= names:
            return INCOMPLETE, f"{meta} names shards not written yet: {sorted(shards - names)[:3]}"
    for name in weights:
        shard = SHARD_NAME.fullmatch(name)
        if shard:
            total = int(shard.group(2))
            prefix = name[:name.rfind("-", 0, name.rfind("-of-"))]
            suffix = name[name.rfind("."):]
            width = len(shard.group(1))
            expected = {f"{prefix}-{i:0{width}d}-of-{shard.group(2)}{suffix}" for i in range(1, total + 1)}
            if not expected <= names:
                return INCOMPLETE, f"{len(expected & names)} of {total} shards of {prefix} written"
        try:
            problem = weight_file_problem(os.path.join(folder, name))
        except FileNotFoundError:
            return INCOMPLETE, f"{name} was removed while it was checked"
        if problem:
            return INCOMPLETE, problem
    return COMPLETE, ""


class Completeness:
    """state(checkpoint): COMPLETE, CHANGING (first look, or files changed since the last),
    INCOMPLETE (stable, but a file is cut short), NOT_SCORABLE (a sharded training layout
    the server cannot load) or NOT_READY (no marker yet, or no config.json with weights)."""

    def __init__(self, marker: Optional[str] = None):
        self.marker = marker
        self.seen: Dict[str, tuple] = {}

    def state(self, checkpoint: Checkpoint) -> State:
        current = fingerprint(checkpoint.path)
        files = digest(current)
        if self.marker:
            if not os.path.exists(os.path.join(checkpoint.path, self.marker)):
                return State(NOT_READY, f"no {self.marker} file yet", files)
        else:
            stable = bool(current) and self.seen.get(checkpoint.path) == current
            self.seen[checkpoint.path] = current
            if not stable:
                return State(CHANGING, "", files)
        kind, why = weights_state(checkpoint.path)
        if kind == NOT_READY:
            reason = not_scorable_reason(checkpoint.path)
            if reason:
                return State(NOT_SCORABLE, reason, files)
        return State(kind, why, files)

    def check(self, checkpoint: Checkpoint) -> bool:
        return self.state(checkpoint).kind == COMPLETE
