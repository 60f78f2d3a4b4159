"""Reads what an offline wandb run wrote: the history rows of its run-ID.wandb file.

The file is a LevelDB-style log: a 7-byte header (":W&B", 2 magic bytes, a version
byte), then records in 32 KiB blocks, each chunk a 7-byte header (CRC-32 of type + data,
little-endian length, type: 1 full, 2 first, 3 middle, 4 last) and its data; a block's
tail shorter than a header is padding. Each record is a wandb.internal.Record protobuf.
"""

from __future__ import annotations

import glob
import json
import os
import struct
import zlib
from typing import Dict, List

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> List[bytes]:
    """The whole records of the file; a chunk cut short (a killed writer) ends the read."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b":W&B", f"{path} is not a wandb transaction log"
    out, parts, pos = [], [], HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # padding at a block's end
            pos += BLOCK - pos % BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        if len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            break
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            out.append(b"".join(parts + [chunk]))
            parts = []
    return out


def history(run_folder: str) -> List[Dict[str, object]]:
    """The history rows of an offline run folder, as {key: value}."""
    from wandb.proto import wandb_internal_pb2

    [path] = glob.glob(os.path.join(run_folder, "run-*.wandb"))
    rows = []
    for raw in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def newest_offline_run(output_dir: str) -> str:
    folders = sorted(glob.glob(os.path.join(output_dir, "wandb", "offline-run-*")))
    assert folders, f"no offline wandb run under {output_dir}"
    return folders[-1]
