"""`eval watch`: find checkpoint folders as trainers name them (checkpoints.py), wait until
each is completely written (completeness.py), load it into the server the watcher owns
(server_guard.py) with update_weights_from_disk, score the tasks, and record one row per
task in results.jsonl (report.py), mirrored to wandb (wandb_sync.py).

With several servers (Watcher.more_contexts, `--concurrent-checkpoints`), each server
takes the next checkpoint due and they score at once; rows, the plot and wandb are
written under one lock as each task finishes.

What is tried when follows from the rows already recorded (attempts.py), so a restart,
also after kill -9, scores exactly what is missing: every completed checkpoint once, an
incomplete write again once it changes, a broken checkpoint never again unless rewritten.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from rollserve.eval.attempts import Attempts, looks_incomplete
from rollserve.eval.checkpoints import (DEFAULT_PATTERNS, Checkpoint, compile_patterns, discover,
                                        model_dir, select)
from rollserve.eval.completeness import (CHANGING, COMPLETE, INCOMPLETE, NOT_READY, NOT_SCORABLE,
                                         Completeness, State, digest, fingerprint)
from rollserve.eval.plot import redraw
from rollserve.eval.report import (FAILED, METRICS_PNG, MISMATCH, OK, STATUS_LABELS, TASK_FAILED, ResultsLog,
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
    more_contexts: Sequence[EvalContext] = ()  # more servers: checkpoints scored concurrently
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
        # one slot per server (group of replicas): a checkpoint is loaded into one slot
        self.slots: List[Slot] = [Slot(self.ctx, self.guard)] + [
            Slot(ctx, ServerGuard(ctx.client, self.options.output_dir,
                                  allow_shared=self.options.allow_shared_server))
            for ctx in self.more_contexts]
        self.lock = threading.RLock()  # results.jsonl, the plot and wandb, across slots
        self.bars = None  # the progress shared by concurrent checkpoints

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
        if len(self.slots) > 1:
            self._run_concurrently()
            return self.scored
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
        for slot in self.slots:
            if slot.guard is not None:
                slot.guard.check_server()
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
        due, waiting = self.find_due(1)
        for checkpoint, todo, files in due:
            self.score(checkpoint, todo, files)
        return bool(due), waiting

    def find_due(self, limit: int, busy: Sequence[str] = ()) -> tuple:
        """Up to `limit` checkpoints due for scoring, in --order, each with its tasks to
        score and its files' digest, leaving out those being scored (`busy`); records
        incomplete and unscorable folders on the way. Returns (due, still changing)."""
        rows = self.log.read()
        attempts = Attempts(rows, self.options.poll_interval)
        found = discover(self.options.checkpoint_dir, self.patterns, exclude=[self.options.output_dir])
        recorded = {(r["step"], r["checkpoint"]) for r in rows if r["checkpoint"] != BASELINE}
        chosen = select(found, order=self.options.order, every=self.options.every,
                        recorded=recorded)
        shared_steps = {c.step for c in found if sum(o.step == c.step for o in found) > 1}
        waiting, due = [], []
        for checkpoint in chosen:
            if len(due) >= limit:
                break
            if checkpoint.name in busy:
                continue
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
                    due.append((checkpoint, todo, state.files))
        return due, waiting

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
    def score(self, checkpoint: Checkpoint, todo: Sequence[Task], files: str,
              slot: Optional["Slot"] = None) -> None:
        slot = slot or self.slots[0]
        with self.lock:
            self.scored += 1
        version = slot.guard.version_for(checkpoint.step) if slot.guard else str(checkpoint.step)
        error = self._load(slot, checkpoint, version)
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
                rows.append(self._score_task(slot, checkpoint, task, version, files))
        finally:
            if rows:
                self._after(checkpoint, rows)

    def _score_task(self, slot: "Slot", checkpoint: Checkpoint, task: Task, version: str,
                    files: str) -> dict:
        slot.ctx.weight_versions.clear()
        common = dict(weight_version_set=version, files=files)
        try:
            result = run_tasks(slot.ctx, [task], console=self.console, progress=self.progress,
                               label=f"{checkpoint.name} ", bars=self.bars)[0]
        except RolloutError as e:  # the server refused a request of this task
            if e.status is None:
                raise
            row = result_row(checkpoint.step, checkpoint.name, checkpoint.path, task.name,
                             error=str(e), status=TASK_FAILED, **common)
            self._record([row])
            return row
        seen = slot.ctx.weight_versions
        mismatch = slot.guard.judge(version, seen) if slot.guard else None
        row = result_row(checkpoint.step, checkpoint.name, checkpoint.path, task.name,
                         result=result, error=mismatch, status=MISMATCH if mismatch else OK,
                         weight_version=ServerGuard.reported(seen), **common)
        with self.lock:
            self.log.write_samples(checkpoint.name, result)  # before the row: wandb reads them
        self._record([row])  # each task as it finishes: a kill loses at most the one running
        if mismatch and not self.options.allow_shared_server:
            raise SharedServerError(f"{checkpoint.name}/{task.name}: {mismatch}")
        return row

    def _load(self, slot: "Slot", checkpoint: Checkpoint, version: str) -> Optional[str]:
        """None when the server now serves the checkpoint, else why not."""
        path = model_dir(checkpoint.path)
        logger.info("loading %s (step %d) from %s", checkpoint.name, checkpoint.step, path)
        try:
            answer = slot.ctx.client.update_weights_from_disk(path, weight_version=version)
        except RolloutError as e:
            if e.status is None:  # no server answered: not the checkpoint's fault
                raise
            return str(e)
        if isinstance(answer, dict) and answer.get("success") is False:
            return str(answer.get("message") or answer)
        return None

    def _record(self, rows: List[dict]) -> None:
        with self.lock:
            self.log.append(rows)
            if self.wandb is not None:
                for row in rows:
                    self.wandb.log_row(row)

    def _after(self, checkpoint: Checkpoint, rows: List[dict]) -> None:
        with self.lock:
            redraw(self.log)
            if self.wandb is not None and hasattr(self.wandb, "log_plot"):
                self.wandb.log_plot(checkpoint.step, self.log.path(METRICS_PNG))
            if self.on_checkpoint is not None:
                self.on_checkpoint(checkpoint, rows)

    # ---- several servers ------------------------------------------------------------------
    def _run_concurrently(self) -> None:
        """Each free slot takes the next checkpoint due; all slots score at once, with a
        progress bar per checkpoint and task. Stops like the serial loop does."""
        from rollserve.eval.console import make_console, progress_bars

        free, running = list(self.slots), {}
        console = self.console or make_console(stderr=True)
        with progress_bars(console, self.progress) as bars, \
                ThreadPoolExecutor(len(self.slots), thread_name_prefix="eval-checkpoint") as pool:
            self.bars = bars
            try:
                while True:
                    waiting = []
                    budget = len(free) if self.options.max_checkpoints is None else min(
                        len(free), self.options.max_checkpoints - self.scored)
                    if budget > 0:
                        busy = [name for _, name in running.values()]
                        due, waiting = self.find_due(budget, busy)
                        for checkpoint, todo, files in due:
                            slot = free.pop()
                            future = pool.submit(self.score, checkpoint, todo, files, slot)
                            running[future] = (slot, checkpoint.name)
                    if not running:
                        if self._enough() or (self.options.once and not waiting):
                            return
                        time.sleep(self._interval())
                        continue
                    done, _ = wait(list(running), timeout=self._interval(),
                                   return_when=FIRST_COMPLETED)
                    for future in done:
                        free.append(running.pop(future)[0])
                        future.result()  # a server that stopped answering ends the watch
            finally:
                self.bars = None


@dataclass
class Slot:
    """A server (one or more replicas behind one client) and the guard that owns it."""

    ctx: EvalContext
    guard: Optional[ServerGuard]
