"""Where results go: results.jsonl (the record, one row per attempt at a checkpoint and
task; what a restart resumes from and what wandb is synced from), results.csv (and
metrics.png, plot.py) redrawn from it, and per-sample outputs under samples/.

A row's status:
  ok            scored
  failed        the server refused to load the checkpoint (a broken checkpoint)
  task_failed   the checkpoint loaded, the server refused a request of this task
  incomplete    an incomplete write (a file cut short); retried, never counted as broken
  not_scorable  a sharded training layout the server cannot load (the error says what to run)
  mismatch      the server reported another weight_version than the one loaded for it
Several rows of one (checkpoint, task) may exist (an incomplete write, then its score);
the latest is the one that stands (`latest_rows`).
"""

from __future__ import annotations

import csv
import datetime
import json
import os
import uuid
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from rollserve.eval.tasks.base import TaskResult

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
METRICS_PNG = "metrics.png"
SAMPLES_DIR = "samples"
OK, FAILED, TASK_FAILED = "ok", "failed", "task_failed"
INCOMPLETE, NOT_SCORABLE, MISMATCH = "incomplete", "not_scorable", "mismatch"
STATUS_LABELS = {OK: "ok", FAILED: "broken checkpoint", TASK_FAILED: "task refused",
                 INCOMPLETE: "incomplete write", NOT_SCORABLE: "not scorable",
                 MISMATCH: "weight_version mismatch"}
FIXED_COLUMNS = ["step", "checkpoint", "task", "status", "num_examples", "seconds",
                 "weight_version", "weight_version_set"]


def result_row(step: int, checkpoint: str, path: str, task: str, *,
               result: Optional[TaskResult] = None, error: Optional[str] = None,
               status: Optional[str] = None, weight_version: Optional[str] = None,
               weight_version_set: Optional[str] = None, files: Optional[str] = None) -> dict:
    """One row of results.jsonl: a task's metrics on a checkpoint, or why there are none.
    weight_version is what the server reported on its responses, weight_version_set what
    the watcher loaded; files the digest of the checkpoint folder when it was tried."""
    if status is None:
        status = OK if error is None else FAILED
    return {"id": uuid.uuid4().hex[:12], "step": step, "checkpoint": checkpoint, "path": path,
            "task": task, "kind": result.kind if result else None, "status": status,
            "error": error, "weight_version": weight_version,
            "weight_version_set": weight_version_set, "files": files,
            "num_examples": result.num_examples if result else 0,
            "seconds": round(result.seconds, 3) if result else 0.0,
            "metrics": dict(result.metrics) if result else {},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def row_id(row: dict) -> str:
    """A row's identity (rows written before ids existed: checkpoint, task and time)."""
    return row.get("id") or f"{row['checkpoint']}|{row['task']}|{row.get('time')}"


def latest_rows(rows: Iterable[dict]) -> Dict[Tuple[str, str], dict]:
    """(checkpoint, task) -> the last row recorded for it."""
    latest: Dict[Tuple[str, str], dict] = {}
    for row in rows:
        latest[(row["checkpoint"], row["task"])] = row
    return latest


def standing_rows(rows: Iterable[dict]) -> List[dict]:
    """The row that stands for each (checkpoint, task), by step: what tables and plots show."""
    return sorted(latest_rows(rows).values(), key=lambda r: (r["step"], r["checkpoint"], r["task"]))


def write_jsonl(path: str, rows: Iterable[dict], mode: str = "w") -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, mode, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str, limit: Optional[int] = None) -> List[dict]:
    """Rows of a JSONL file; a line cut short by a kill is skipped."""
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
                if limit is not None and len(rows) >= limit:
                    break
    except FileNotFoundError:
        pass
    return rows


def _jsonable(value):
    return float(value) if hasattr(value, "__float__") else str(value)


@dataclass
class ResultsLog:
    """The output folder of `eval watch`."""

    output_dir: str

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def read(self) -> List[dict]:
        """Rows recorded so far, in the order they were written."""
        return read_jsonl(self.path(RESULTS_JSONL))

    def append(self, rows: Sequence[dict]) -> None:
        path = self.path(RESULTS_JSONL)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb") as f:  # a kill mid-line must not glue two rows together
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(path, "a") as g:
                        g.write("\n")
        write_jsonl(path, rows, mode="a")

    def samples_path(self, checkpoint: str, task: str) -> str:
        return self.path(os.path.join(SAMPLES_DIR, checkpoint, f"{task}.jsonl"))

    def write_samples(self, checkpoint: str, result: TaskResult) -> str:
        path = self.samples_path(checkpoint, result.task)
        write_jsonl(path, ({"task": result.task, **s} for s in result.samples))
        return path

    def read_samples(self, checkpoint: str, task: str, limit: Optional[int] = None) -> List[dict]:
        return read_jsonl(self.samples_path(checkpoint, task), limit)


def metric_names(rows: Iterable[dict]) -> List[str]:
    return sorted({name for row in rows for name in row.get("metrics", {})})


def write_csv(rows: List[dict], path: str) -> None:
    """Every attempt, by step (the status column says which rows a retry superseded)."""
    names = metric_names(rows)
    standing = {row_id(r) for r in latest_rows(rows).values()}
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FIXED_COLUMNS + names + ["superseded", "error", "path", "time", "id"])
        for row in sorted(rows, key=lambda r: (r["step"], r["task"], r.get("time") or "")):
            metrics = row.get("metrics", {})
            writer.writerow([row.get(c) for c in FIXED_COLUMNS] +
                            [metrics.get(n, "") for n in names] +
                            [row_id(row) not in standing, row.get("error") or "",
                             row.get("path", ""), row.get("time", ""), row_id(row)])
    os.replace(tmp, path)
