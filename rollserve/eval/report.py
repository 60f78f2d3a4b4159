"""Where results go: results.jsonl (the record, one row per checkpoint and task; what a
restart resumes from), results.csv and metrics.png (redrawn from it), per-sample
outputs under samples/, and a wandb run (offline by default) with step = checkpoint step.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

from rollserve.eval.tasks.base import TaskResult

RESULTS_JSONL = "results.jsonl"
RESULTS_CSV = "results.csv"
METRICS_PNG = "metrics.png"
SAMPLES_DIR = "samples"
FIXED_COLUMNS = ["step", "checkpoint", "task", "status", "num_examples", "seconds",
                 "weight_version"]


def result_row(step: int, checkpoint: str, path: str, task: str, *,
               result: Optional[TaskResult] = None, error: Optional[str] = None,
               weight_version: Optional[str] = None) -> dict:
    """One row of results.jsonl: a task's metrics on a checkpoint, or why it failed."""
    return {"step": step, "checkpoint": checkpoint, "path": path, "task": task,
            "kind": result.kind if result else None,
            "status": "ok" if error is None else "failed", "error": error,
            "weight_version": weight_version,
            "num_examples": result.num_examples if result else 0,
            "seconds": round(result.seconds, 3) if result else 0.0,
            "metrics": dict(result.metrics) if result else {},
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write_jsonl(path: str, rows: Iterable[dict], mode: str = "w") -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, mode, encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_jsonable) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _jsonable(value):
    return float(value) if hasattr(value, "__float__") else str(value)


@dataclass
class ResultsLog:
    """The output folder of `eval watch`."""

    output_dir: str

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def read(self) -> List[dict]:
        """Rows recorded so far; a line cut short by a kill is skipped."""
        rows = []
        try:
            with open(self.path(RESULTS_JSONL), encoding="utf-8") as f:
                for line in f:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        continue
        except FileNotFoundError:
            pass
        return rows

    def done(self) -> set:
        """(checkpoint name, task) pairs already recorded, failed loads included."""
        return {(row["checkpoint"], row["task"]) for row in self.read()}

    def append(self, rows: Sequence[dict]) -> None:
        path = self.path(RESULTS_JSONL)
        if os.path.exists(path) and os.path.getsize(path):
            with open(path, "rb") as f:  # a kill mid-line must not glue two rows together
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    with open(path, "a") as g:
                        g.write("\n")
        write_jsonl(path, rows, mode="a")

    def write_samples(self, checkpoint: str, results: Sequence[TaskResult]) -> str:
        path = self.path(os.path.join(SAMPLES_DIR, f"{checkpoint}.jsonl"))
        write_jsonl(path, ({"task": r.task, **s} for r in results for s in r.samples))
        return path

    def redraw(self) -> None:
        rows = self.read()
        write_csv(rows, self.path(RESULTS_CSV))
        plot_metrics(rows, self.path(METRICS_PNG))


def metric_names(rows: Iterable[dict]) -> List[str]:
    return sorted({name for row in rows for name in row.get("metrics", {})})


def write_csv(rows: List[dict], path: str) -> None:
    names = metric_names(rows)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(FIXED_COLUMNS + names + ["error", "path", "time"])
        for row in sorted(rows, key=lambda r: (r["step"], r["task"])):
            metrics = row.get("metrics", {})
            writer.writerow([row.get(c) for c in FIXED_COLUMNS] +
                            [metrics.get(n, "") for n in names] +
                            [row.get("error") or "", row.get("path", ""), row.get("time", "")])
    os.replace(tmp, path)


def metric_series(rows: Iterable[dict]) -> Dict[str, List[tuple]]:
    """"task/metric" -> [(step, value)] over the checkpoints that loaded, by step."""
    series: Dict[str, List[tuple]] = defaultdict(list)
    for row in rows:
        if row.get("status") != "ok":
            continue
        for name, value in row.get("metrics", {}).items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                series[f"{row['task']}/{name}"].append((row["step"], value))
    return {key: sorted(points) for key, points in sorted(series.items())}


def plot_metrics(rows: List[dict], path: str) -> Optional[str]:
    """One panel per task/metric over checkpoint steps; failed checkpoints as red
    dashed lines. Written atomically; None when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = metric_series(rows)
    if not series:
        return None
    failed = sorted({row["step"] for row in rows if row.get("status") != "ok"})
    cols = min(3, len(series))
    nrows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o")
        for step in failed:
            ax.axvline(step, color="red", linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series):]:
        ax.set_visible(False)
    if failed:
        fig.suptitle("red dashed lines: checkpoints that failed to load", fontsize=9)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---- wandb ---------------------------------------------------------------------------------------
SAMPLE_COLUMNS = ["step", "task", "id", "prompt", "output", "target", "score"]


def sample_table_rows(step: int, results: Sequence[TaskResult], per_task: int) -> List[list]:
    """A few sample generations per task for a table: prompt, output, target, score."""
    out = []
    for result in results:
        for sample in result.samples[:per_task]:
            output = sample.get("output", (sample.get("outputs") or [""])[0])
            score = _sample_score(sample)
            out.append([step, result.task, str(sample.get("id", "")),
                        str(sample.get("prompt", ""))[-500:], str(output),
                        str(sample.get("target", "")), score])
    return out


def _sample_score(sample: dict) -> Optional[float]:
    for key in ("correct", "acc", "rewards", "loglikelihood"):
        value = sample.get(key)
        if isinstance(value, list) and value:
            return float(value[0])
        if isinstance(value, (int, float)):
            return float(value)
    return None


class WandbLogger:
    """One wandb run for the whole watch; its id is kept in the output folder so a
    restarted watcher continues the same run. mode: offline | online | disabled."""

    def __init__(self, output_dir: str, *, project: str, run_name: Optional[str],
                 tags: Sequence[str] = (), mode: str = "offline", config: Optional[dict] = None,
                 samples_per_task: int = 8):
        self.run = None
        self.last_step = -1
        self.samples_per_task = samples_per_task
        if mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        os.makedirs(output_dir, exist_ok=True)
        self.run = wandb.init(project=project, name=run_name, tags=list(tags), mode=mode,
                              dir=output_dir, id=self._run_id(output_dir), resume="allow",
                              config=config or {},
                              settings=wandb.Settings(quiet=True, silent=True, console="off"))
        self.run.define_metric("checkpoint_step")
        self.run.define_metric("*", step_metric="checkpoint_step")

    def _run_id(self, output_dir: str) -> str:
        path = os.path.join(output_dir, "wandb_run_id")
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        run_id = uuid.uuid4().hex[:12]
        with open(path, "w") as f:
            f.write(run_id)
        return run_id

    def log_checkpoint(self, step: int, results: Sequence[TaskResult]) -> None:
        if self.run is None:
            return
        payload = {"checkpoint_step": step}
        for result in results:
            payload.update({f"{result.task}/{k}": v for k, v in result.metrics.items()})
        rows = sample_table_rows(step, results, self.samples_per_task)
        if rows:
            payload["samples"] = self.wandb.Table(columns=SAMPLE_COLUMNS, data=rows)
        self._log(payload, step)

    def log_failure(self, step: int, checkpoint: str, error: str) -> None:
        if self.run is not None:
            self._log({"checkpoint_step": step, "failed_checkpoints": self.wandb.Table(
                columns=["step", "checkpoint", "error"], data=[[step, checkpoint, error]])}, step)

    def _log(self, payload: dict, step: int) -> None:
        # wandb drops a step lower than one already logged: such a (late) checkpoint
        # still lands on its checkpoint_step axis.
        if step > self.last_step:
            self.run.log(payload, step=step)
            self.last_step = step
        else:
            self.run.log(payload)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
