"""`eval watch`: find checkpoint folders as trainers name them, wait until each is
complete, load it into the running server (update_weights_from_disk with
weight_version = its step), score the tasks, record the rows; resume from results.jsonl.

Complete means: the marker file exists (with --marker), else config.json and the weights
(every shard an index names) are there and the folder's files (names, sizes, mtimes) are
the same on two polls in a row.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.report import ResultsLog, result_row
from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks.base import EvalContext, Task, TaskResult
from rollserve.rollout.errors import RolloutError

logger = logging.getLogger("rollserve.eval")

# transformers' Trainer: checkpoint-500; verl / OpenRLHF: global_step_500 or global_step500;
# others: step_500
DEFAULT_PATTERNS = (r"checkpoint-(\d+)", r"global_step_?(\d+)", r"step_(\d+)")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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


def model_dir(path: str, max_depth: int = 3) -> str:
    """The folder holding config.json and weights: the checkpoint itself or, for
    trainers that nest it (e.g. global_step_N/actor/huggingface), a subfolder."""
    candidates = []
    for folder, dirs, names in os.walk(path):
        depth = os.path.relpath(folder, path).count(os.sep) + (folder != path)
        if depth > max_depth:
            dirs[:] = []
            continue
        if "config.json" in names and any(n.endswith(WEIGHT_SUFFIXES) for n in names):
            candidates.append((depth, folder))
    return min(candidates)[1] if candidates else path


def has_weights(path: str) -> bool:
    """config.json and weight files are there, and every shard a *.index.json names."""
    folder = model_dir(path)
    try:
        names = set(os.listdir(folder))
    except FileNotFoundError:
        return False
    if "config.json" not in names or not any(n.endswith(WEIGHT_SUFFIXES) for n in names):
        return False
    for index in (n for n in names if n.endswith(".index.json")):
        try:
            with open(os.path.join(folder, index)) as f:
                shards = set(json.load(f).get("weight_map", {}).values())
        except (OSError, ValueError):
            return False  # still being written
        if not shards <= names:
            return False
    return True


COMPLETE, CHANGING, NOT_READY = "complete", "changing", "not ready"


class Completeness:
    """Has a checkpoint finished being written? With a marker: the marker file exists.
    Otherwise: its weights are all there and no file changed since the last look.
    state() says COMPLETE, CHANGING (first look, or files changed since the last), or
    NOT_READY (no marker yet, or stable files without config.json and weights)."""

    def __init__(self, marker: Optional[str] = None):
        self.marker = marker
        self.seen: Dict[str, tuple] = {}

    def state(self, checkpoint: Checkpoint) -> str:
        if self.marker:
            marked = os.path.exists(os.path.join(checkpoint.path, self.marker))
            return COMPLETE if marked else NOT_READY
        current = fingerprint(checkpoint.path)
        stable = bool(current) and self.seen.get(checkpoint.path) == current
        self.seen[checkpoint.path] = current
        if not stable:
            return CHANGING
        return COMPLETE if has_weights(checkpoint.path) else NOT_READY

    def check(self, checkpoint: Checkpoint) -> bool:
        return self.state(checkpoint) == COMPLETE


@dataclass
class WatchOptions:
    checkpoint_dir: str
    output_dir: str
    patterns: Sequence[str] = DEFAULT_PATTERNS
    marker: Optional[str] = None
    poll_interval: float = 30.0
    once: bool = False
    baseline: Optional[str] = None  # scored first, as step 0
    max_checkpoints: Optional[int] = None  # stop after scoring this many (tests, smoke runs)


@dataclass
class Watcher:
    ctx: EvalContext
    tasks: Sequence[Task]
    options: WatchOptions
    wandb: object = None  # a report.WandbLogger or None
    console: object = None
    progress: bool = True
    on_checkpoint: Optional[Callable[[Checkpoint, List[dict]], None]] = None
    log: ResultsLog = field(init=False)

    def __post_init__(self):
        self.log = ResultsLog(self.options.output_dir)
        self.patterns = compile_patterns(self.options.patterns)
        self.completeness = Completeness(self.options.marker)
        self.scored = 0
        self.noted: set = set()  # checkpoints already reported as not ready

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Score checkpoints until stopped (or, with once, until none is left); returns
        how many checkpoints were scored in this run."""
        if self.options.baseline:
            self.score(Checkpoint(0, "baseline", os.path.abspath(self.options.baseline)))
        while not self._enough():
            waiting = self.poll()
            if self._enough() or (self.options.once and not waiting):
                break
            time.sleep(self._interval())
        return self.scored

    def _enough(self) -> bool:
        limit = self.options.max_checkpoints
        return limit is not None and self.scored >= limit

    def _interval(self) -> float:
        # --once only waits to see that the files stopped changing
        return min(self.options.poll_interval, 2.0) if self.options.once else self.options.poll_interval

    def poll(self) -> List[Checkpoint]:
        """Scores every complete checkpoint not recorded yet; returns those whose
        files are still changing (--once waits for them, not for NOT_READY ones)."""
        done = self.log.done()
        waiting = []
        for checkpoint in discover(self.options.checkpoint_dir, self.patterns,
                                   exclude=[self.options.output_dir]):
            if all((checkpoint.name, t.name) in done for t in self.tasks):
                continue
            state = self.completeness.state(checkpoint)
            if state == CHANGING:
                waiting.append(checkpoint)
            if state != COMPLETE:
                self._note_not_ready(checkpoint, state)
                continue
            self.score(checkpoint)
            if self._enough():
                break
        return waiting

    def _note_not_ready(self, checkpoint: Checkpoint, state: str) -> None:
        if state == NOT_READY and checkpoint.name not in self.noted:
            self.noted.add(checkpoint.name)
            why = (f"no {self.options.marker} file yet" if self.options.marker
                   else "its files are stable but hold no config.json with weights")
            logger.warning("%s is not scored (yet): %s", checkpoint.name, why)

    # ---- one checkpoint -----------------------------------------------------------------------
    def score(self, checkpoint: Checkpoint) -> None:
        done = self.log.done()
        todo = [t for t in self.tasks if (checkpoint.name, t.name) not in done]
        if not todo:
            return
        error = self._load(checkpoint)
        if error is not None:
            self._record_failure(checkpoint, todo, error)
            return
        rows, results = [], []
        version = str(checkpoint.step)
        for task in todo:
            try:
                result = run_tasks(self.ctx, [task], console=self.console,
                                   progress=self.progress, label=f"{checkpoint.name} ")[0]
            except RolloutError as e:  # the server refused a request of this task
                if e.status is None:
                    raise
                rows.append(result_row(checkpoint.step, checkpoint.name, checkpoint.path,
                                       task.name, error=str(e), weight_version=version))
                self.log.append(rows[-1:])
                continue
            row = result_row(checkpoint.step, checkpoint.name, checkpoint.path, task.name,
                             result=result, weight_version=version)
            self.log.append([row])  # each task as it finishes: a kill loses at most one
            self.log.write_samples(os.path.join(checkpoint.name, task.name), [result])
            rows.append(row)
            results.append(result)
        self._after(checkpoint, rows, results)

    def _load(self, checkpoint: Checkpoint) -> Optional[str]:
        """None when the server now serves the checkpoint, else why not."""
        path = model_dir(checkpoint.path)
        logger.info("loading %s (step %d) from %s", checkpoint.name, checkpoint.step, path)
        try:
            answer = self.ctx.client.update_weights_from_disk(
                path, weight_version=str(checkpoint.step))
        except RolloutError as e:
            if e.status is None:  # no server answered: not the checkpoint's fault
                raise
            return str(e)
        if isinstance(answer, dict) and answer.get("success") is False:
            return str(answer.get("message") or answer)
        return None

    def _record_failure(self, checkpoint: Checkpoint, todo: Sequence[Task], error: str) -> None:
        logger.warning("%s failed to load, skipped: %s", checkpoint.name, error)
        rows = [result_row(checkpoint.step, checkpoint.name, checkpoint.path, t.name, error=error)
                for t in todo]
        self.log.append(rows)
        if self.wandb is not None:
            self.wandb.log_failure(checkpoint.step, checkpoint.name, error)
        self._after(checkpoint, rows, [])

    def _after(self, checkpoint: Checkpoint, rows: List[dict], results: List[TaskResult]) -> None:
        self.scored += 1
        self.log.redraw()
        if self.wandb is not None and results:
            self.wandb.log_checkpoint(checkpoint.step, results)
        if self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint, rows)

