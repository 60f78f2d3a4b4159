"""Runs tasks against a server through the RolloutClient, with a progress bar per task."""

from __future__ import annotations

from typing import List, Optional, Sequence

from rich.console import Console

from rollserve.eval.console import make_console, progress_bars
from rollserve.eval.tasks.base import EvalContext, Task, TaskResult


def run_tasks(ctx: EvalContext, tasks: Sequence[Task], *, console: Optional[Console] = None,
              progress: bool = True, label: str = "", bars=None) -> List[TaskResult]:
    """Each task in turn (with its own settings overrides); one result per task, in order.
    bars: a rich Progress shared with other runs (the watcher's concurrent checkpoints),
    else one of this call's own."""
    if bars is not None:
        return [_run_one(ctx, task, bars, label) for task in tasks]
    console = console or make_console(stderr=True)
    with progress_bars(console, progress) as own:
        return [_run_one(ctx, task, own, label) for task in tasks]


def _run_one(ctx: EvalContext, task: Task, bars, label: str) -> TaskResult:
    run_settings = ctx.settings
    ctx.settings = task.settings_for(run_settings)
    try:
        total = task.size(ctx.settings)
        bar = bars.add_task(f"{label}{task.name}", total=total)
        ctx.advance = lambda n: bars.advance(bar, n)
        result = task.evaluate(ctx)
        bars.update(bar, completed=total)
        return result
    finally:
        ctx.settings = run_settings
        ctx.advance = lambda n: None

