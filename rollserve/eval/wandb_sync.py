"""The wandb run of `eval watch`: a mirror of results.jsonl, which stays the record.

Each results row becomes one wandb history row, logged and committed at once:
checkpoint_step (the x axis of every chart), eval/row (the row's id), eval/checkpoint,
eval/task, eval/status, eval/weight_version, eval/error, the task's metrics as
TASK/METRIC (scored rows only) and a TASK/samples table. One row never carries another
checkpoint's metrics, and rows are never merged by step.

On start, every row results.jsonl has and the wandb run lacks is logged, so a kill
(wandb-core buffers its file; a kill -9 of the watcher loses what it had not written)
loses nothing once the watcher runs again:
* offline (the default): wandb cannot append to an offline run from a new process (each
  start writes a new offline-run-* folder, and `wandb sync` of several folders with one
  run id keeps one of them), so each start writes the whole history into its new folder
  and moves the run's older folders to wandb/superseded/. `wandb sync OUTPUT/wandb/latest-run`
  uploads everything.
* online: the run is resumed by id and its history is read back through the public API.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import shutil
import uuid
from typing import List, Optional, Sequence, Set

import rollserve.eval.stats as stats
from rollserve.eval.plot import is_bounded
from rollserve.eval.report import OK, ResultsLog, row_id

logger = logging.getLogger("rollserve.eval")

SAMPLE_COLUMNS = ["step", "task", "id", "prompt", "output", "target", "score"]
RUN_ID_FILE = "wandb_run_id"


def sample_table_rows(step: int, task: str, samples: Sequence[dict]) -> List[list]:
    """Sample generations for a table: prompt, output, target, score."""
    out = []
    for sample in samples:
        output = sample.get("output", (sample.get("outputs") or [""])[0])
        out.append([step, task, str(sample.get("id", "")), str(sample.get("prompt", ""))[-500:],
                    str(output), str(sample.get("target", "")), _sample_score(sample)])
    return out


def _sample_score(sample: dict) -> Optional[float]:
    for key in ("correct", "acc", "rewards", "loglikelihood"):
        value = sample.get(key)
        if isinstance(value, list) and value:
            return float(value[0])
        if isinstance(value, (int, float)):
            return float(value)
    return None


def history_row(row: dict) -> dict:
    """The wandb history row (without the samples table) of one results row."""
    task = row["task"]
    payload = {"checkpoint_step": row["step"], "eval/row": row_id(row),
               "eval/checkpoint": row["checkpoint"], "eval/task": task,
               "eval/status": row["status"], "eval/weight_version": row.get("weight_version") or ""}
    if row.get("error"):
        payload["eval/error"] = str(row["error"])[:2000]
    if row["status"] == OK:
        metrics = row.get("metrics", {})
        payload.update({f"{task}/{k}": v for k, v in metrics.items()
                        if isinstance(v, (int, float)) and math.isfinite(v)})
        # the band as two more series: chart METRIC with METRIC_ci95_low/high beside it
        for name, value in metrics.items():
            if stats.is_stderr(name) or not isinstance(value, (int, float)):
                continue
            interval = stats.band(value, metrics.get(stats.stderr_name(name)), is_bounded(name),
                                  n=row.get("num_examples"))
            if interval is not None:
                payload[f"{task}/{name}_ci95_low"], payload[f"{task}/{name}_ci95_high"] = interval
    return payload


class WandbSync:
    """One wandb run for the whole watch; its id is kept in OUTPUT_DIR/wandb_run_id so a
    restarted watcher continues it. mode: offline | online | disabled."""

    def __init__(self, log: ResultsLog, *, project: str, run_name: Optional[str],
                 tags: Sequence[str] = (), mode: str = "offline", config: Optional[dict] = None,
                 samples_per_task: int = 8):
        self.log = log
        self.run = None
        self.logged: Set[str] = set()
        self.samples_per_task = samples_per_task
        if mode == "disabled":
            return
        import wandb

        self.wandb = wandb
        # Run our own wandb-core. One inherited from a parent process (WANDB_SERVICE, which
        # wandb sets for the children of a process that uses it) outlives a killed watcher
        # and keeps its run open: the restart would be refused ("run ID ... is in use").
        os.environ.pop("WANDB_SERVICE", None)
        os.makedirs(log.output_dir, exist_ok=True)
        run_id = self._run_id()
        if mode == "offline":
            self._supersede_offline_folders(run_id)
        self.run = wandb.init(project=project, name=run_name, tags=list(tags), mode=mode,
                              dir=log.output_dir, id=run_id, resume="allow", config=config or {},
                              settings=wandb.Settings(quiet=True, silent=True, console="off"))
        self.run.define_metric("checkpoint_step")
        self.run.define_metric("*", step_metric="checkpoint_step")
        if mode == "online":
            self.logged = self._logged_online()

    @property
    def folder(self) -> Optional[str]:
        """The run's local folder (offline: what `wandb sync` uploads)."""
        return None if self.run is None else os.path.dirname(self.run.dir)

    def _run_id(self) -> str:
        path = self.log.path(RUN_ID_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return f.read().strip()
        run_id = uuid.uuid4().hex[:12]
        with open(path, "w") as f:
            f.write(run_id)
        return run_id

    def _supersede_offline_folders(self, run_id: str) -> None:
        """This start writes the complete history; older folders of the run would only
        overwrite it if synced after it."""
        wandb_dir = self.log.path("wandb")
        for folder in sorted(glob.glob(os.path.join(wandb_dir, f"offline-run-*-{run_id}"))):
            target = os.path.join(wandb_dir, "superseded", os.path.basename(folder))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(folder, target)

    def _logged_online(self) -> Set[str]:
        try:
            api = self.wandb.Api()
            run = api.run(f"{self.run.entity}/{self.run.project}/{self.run.id}")
            return {str(h["eval/row"]) for h in run.scan_history(keys=["eval/row"])
                    if h.get("eval/row")}
        except Exception as e:  # network or permissions: do not duplicate rows blindly
            logger.warning("could not read the wandb run's history (%s); rows missing from it "
                           "are not re-logged this time", e)
            return {row_id(r) for r in self.log.read()}

    # ---- logging ------------------------------------------------------------------------------
    def sync(self) -> int:
        """Logs every row of results.jsonl the run lacks, in recorded order; how many."""
        if self.run is None:
            return 0
        count = 0
        for row in self.log.read():
            if row_id(row) not in self.logged:
                self.log_row(row)
                count += 1
        if count:
            logger.info("wandb: logged %d rows from results.jsonl", count)
        return count

    def log_row(self, row: dict) -> None:
        if self.run is None or row_id(row) in self.logged:
            return
        payload = history_row(row)
        if row["status"] == OK and self.samples_per_task > 0:
            samples = self.log.read_samples(row["checkpoint"], row["task"], self.samples_per_task)
            if samples:
                payload[f"{row['task']}/samples"] = self.wandb.Table(
                    columns=SAMPLE_COLUMNS, data=sample_table_rows(row["step"], row["task"], samples))
        self.run.log(payload, commit=True)
        self.logged.add(row_id(row))

    def log_plot(self, step: int, path: str) -> None:
        """metrics.png (with its bands) as eval/metrics_plot, after each checkpoint."""
        if self.run is None or not os.path.exists(path):
            return
        self.run.log({"checkpoint_step": step, "eval/metrics_plot": self.wandb.Image(path)},
                     commit=True)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
