"""`eval watch`: find checkpoint folders as trainers name them (checkpoints.py), wait until
each is completely written (completeness.py), load it into the server the watcher owns
(server_guard.py) with update_weights_from_disk, score the tasks, and record one row per
task in results.jsonl (report.py), mirrored to wandb (wandb_sync.py).

What is tried when follows from the rows already recorded (attempts.py), so a restart,
also after kill -9, scores exactly what is missing: every completed checkpoint once, an
incomplete write again once it changes, a broken checkpoint never again unless rewritten.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from rollserve.eval.attempts import Attempts, looks_incomplete
from rollserve.eval.checkpoints import (DEFAULT_PATTERNS, Checkpoint, compile_patterns, discover,
                                        model_dir, select)
from rollserve.eval.completeness import (CHANGING, COMPLETE, INCOMPLETE, NOT_READY, NOT_SCORABLE,
                                         Completeness, State, digest, fingerprint)
from rollserve.eval.plot import redraw
from rollserve.eval.report import (FAILED, MISMATCH, OK, STATUS_LABELS, TASK_FAILED, ResultsLog,
                                   result_row)
from rollserve.eval.report import INCOMPLETE as INCOMPLETE_ROW
from rollserve.eval.report import NOT_SCORABLE as NOT_SCORABLE_ROW
from rollserve.eval.runner import run_tasks
from rollserve.eval.server_guard import ServerGuard, SharedServerError
from rollserve.eval.tasks.base import EvalContext, Task
from rollserve.rollout.errors import RolloutError

logger = logging.getLogger("rollserve.eval")
BASELINE = "baseline"


@dataclass
class WatchOptions:
    checkpoint_dir: str
    output_dir: str
    patterns: Sequence[str] = DEFAULT_PATTERNS
    marker: Optional[str] = None
    poll_interval: float = 30.0
    once: bool = False
    baseline: Optional[str] = None  # scored first, as step 0
    max_checkpoints: Optional[int] = None  # stop after loading this many (tests, smoke runs)
    order: str = "oldest"  # or "newest": a backlog from the latest step down
    every: int = 1  # score every k-th checkpoint (by step, from the oldest known)
    allow_shared_server: bool = False  # load into a server that serves others too


@dataclass
class Watcher:
    ctx: EvalContext
    tasks: Sequence[Task]
    options: WatchOptions
    wandb: object = None  # a wandb_sync.WandbSync or None
    console: object = None
    progress: bool = True
    on_checkpoint: Optional[Callable[[Checkpoint, List[dict]], None]] = None
    log: ResultsLog = field(init=False)

    def __post_init__(self):
        self.log = ResultsLog(self.options.output_dir)
        self.patterns = compile_patterns(self.options.patterns)
        self.completeness = Completeness(self.options.marker)
        self.scored = 0  # checkpoints loaded (or refused by the server) in this run
        self.noted: Dict[str, str] = {}  # checkpoint -> the state last reported for it
        self.guard: Optional[ServerGuard] = None
        if self.ctx.client is not None:
            self.guard = ServerGuard(self.ctx.client, self.options.output_dir,
                                     allow_shared=self.options.allow_shared_server)

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> int:
        """Score checkpoints until stopped (or, with once, until none is left); returns
        how many checkpoints were loaded in this run."""
        self.start()
        if self.options.baseline:
            path = os.path.abspath(self.options.baseline)
            checkpoint, files = Checkpoint(0, BASELINE, path), digest(fingerprint(path))
            todo = self._due(checkpoint, files)
            if todo:
                self.score(checkpoint, todo, files)
        while not self._enough():
            scored, waiting = self.poll()
            if self._enough():
                break
            if scored:  # look again at once: a newer checkpoint may have arrived meanwhile
                continue
            if self.options.once and not waiting:
                break
            time.sleep(self._interval())
        return self.scored

    def start(self) -> None:
        """Before anything is loaded: refuse a server that is not ours, bring wandb level
        with results.jsonl, redraw what a kill may have left stale."""
        if self.guard is not None:
            self.guard.check_server()
        if self.wandb is not None:
            self.wandb.sync()
        if self.log.read():
            redraw(self.log)

    def _enough(self) -> bool:
        limit = self.options.max_checkpoints
        return limit is not None and self.scored >= limit

    def _interval(self) -> float:
        # --once only waits to see that the files stopped changing
        return min(self.options.poll_interval, 2.0) if self.options.once else self.options.poll_interval

    def poll(self) -> tuple:
        """Looks at every checkpoint and scores the first one due (in --order); returns
        (whether one was loaded, the checkpoints whose files are still changing)."""
        rows = self.log.read()
        attempts = Attempts(rows, self.options.poll_interval)
        found = discover(self.options.checkpoint_dir, self.patterns, exclude=[self.options.output_dir])
        recorded = {(r["step"], r["checkpoint"]) for r in rows if r["checkpoint"] != BASELINE}
        chosen = select(found, order=self.options.order, every=self.options.every,
                        recorded=recorded)
        shared_steps = {c.step for c in found if sum(o.step == c.step for o in found) > 1}
        waiting = []
        for checkpoint in chosen:
            if all(attempts.finished(checkpoint.name, t.name) for t in self.tasks):
                continue
            state = self.completeness.state(checkpoint)
            if state.kind == CHANGING:
                waiting.append(checkpoint)
                continue
            if checkpoint.step in shared_steps and state.kind in (NOT_READY, NOT_SCORABLE):
                continue  # e.g. OpenRLHF's DeepSpeed global_stepN beside global_stepN_hf
            if state.kind == NOT_READY:
                self._note(checkpoint, state)
            elif state.kind in (INCOMPLETE, NOT_SCORABLE):
                self._record_state(checkpoint, state, attempts)
            elif state.kind == COMPLETE:
                todo = [t for t in self.tasks if attempts.due(checkpoint.name, t.name, state.files)]
                if todo:
                    self.score(checkpoint, todo, state.files)
                    return True, waiting
        return False, waiting

    def _note(self, checkpoint: Checkpoint, state: State) -> None:
        if self.noted.get(checkpoint.name) != state.detail:
            self.noted[checkpoint.name] = state.detail
            logger.warning("%s is not scored (yet): %s", checkpoint.name, state.detail)

    def _record_state(self, checkpoint: Checkpoint, state: State, attempts: Attempts) -> None:
        """An incomplete write or a layout the server cannot load: recorded once per state
        of the folder's files, never loaded."""
        status = INCOMPLETE_ROW if state.kind == INCOMPLETE else NOT_SCORABLE_ROW
        todo = []
        for task in self.tasks:
            last = attempts.recorded_state(checkpoint.name, task.name)
            if attempts.finished(checkpoint.name, task.name):
                continue
            if last and last.get("status") == status and last.get("files") == state.files:
                continue
            todo.append(task)
        self._note(checkpoint, state)
        if not todo:
            return
        rows = [result_row(checkpoint.step, checkpoint.name, checkpoint.path, t.name,
                           error=state.detail, status=status, files=state.files) for t in todo]
        self._record(rows)
        self._after(checkpoint, rows)

    def _due(self, checkpoint: Checkpoint, files: str) -> List[Task]:
        attempts = Attempts(self.log.read(), self.options.poll_interval)
        return [t for t in self.tasks if attempts.due(checkpoint.name, t.name, files)]

    # ---- one checkpoint -----------------------------------------------------------------------
    def score(self, checkpoint: Checkpoint, todo: Sequence[Task], files: str) -> None:
        self.scored += 1
        version = self.guard.version_for(checkpoint.step) if self.guard else str(checkpoint.step)
        error = self._load(checkpoint, version)
        if error is not None:
            status = INCOMPLETE_ROW if looks_incomplete(error) else FAILED
            logger.warning("%s failed to load (%s): %s", checkpoint.name, STATUS_LABELS[status], error)
            rows = [result_row(checkpoint.step, checkpoint.name, checkpoint.path, t.name,
                               error=error, status=status, weight_version_set=version, files=files)
                    for t in todo]
            self._record(rows)
            self._after(checkpoint, rows)
            return
        rows = []
        try:
            for task in todo:
                rows.append(self._score_task(checkpoint, task, version, files))
        finally:
            if rows:
                self._after(checkpoint, rows)

    def _score_task(self, checkpoint: Checkpoint, task: Task, version: str, files: str) -> dict:
        self.ctx.weight_versions.clear()
        common = dict(weight_version_set=version, files=files)
        try:
            result = run_tasks(self.ctx, [task], console=self.console, progress=self.progress,
                               label=f"{checkpoint.name} ")[0]
        except RolloutError as e:  # the server refused a request of this task
            if e.status is None:
                raise
            row = result_row(checkpoint.step, checkpoint.name, checkpoint.path, task.name,
                             error=str(e), status=TASK_FAILED, **common)
            self._record([row])
            return row
        seen = self.ctx.weight_versions
        mismatch = self.guard.judge(version, seen) if self.guard else None
        row = result_row(checkpoint.step, checkpoint.name, checkpoint.path, task.name,
                         result=result, error=mismatch, status=MISMATCH if mismatch else OK,
                         weight_version=ServerGuard.reported(seen), **common)
        self.log.write_samples(checkpoint.name, result)  # before the row: wandb reads them
        self._record([row])  # each task as it finishes: a kill loses at most the one running
        if mismatch and not self.options.allow_shared_server:
            raise SharedServerError(f"{checkpoint.name}/{task.name}: {mismatch}")
        return row

    def _load(self, checkpoint: Checkpoint, version: str) -> Optional[str]:
        """None when the server now serves the checkpoint, else why not."""
        path = model_dir(checkpoint.path)
        logger.info("loading %s (step %d) from %s", checkpoint.name, checkpoint.step, path)
        try:
            answer = self.ctx.client.update_weights_from_disk(path, weight_version=version)
        except RolloutError as e:
            if e.status is None:  # no server answered: not the checkpoint's fault
                raise
            return str(e)
        if isinstance(answer, dict) and answer.get("success") is False:
            return str(answer.get("message") or answer)
        return None

    def _record(self, rows: List[dict]) -> None:
        self.log.append(rows)
        if self.wandb is not None:
            for row in rows:
                self.wandb.log_row(row)

    def _after(self, checkpoint: Checkpoint, rows: List[dict]) -> None:
        redraw(self.log)
        if self.on_checkpoint is not None:
            self.on_checkpoint(checkpoint, rows)
