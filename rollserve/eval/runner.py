"""Runs tasks against a server through the RolloutClient, with a progress bar per task."""

from __future__ import annotations

from typing import List, Optional, Sequence

from rich.console import Console

from rollserve.eval.console import make_console, progress_bars
from rollserve.eval.tasks.base import EvalContext, Task, TaskResult


def run_tasks(ctx: EvalContext, tasks: Sequence[Task], *, console: Optional[Console] = None,
              progress: bool = True, label: str = "") -> List[TaskResult]:
    """Each task in turn; one result per task, in order."""
    console = console or make_console(stderr=True)
    results = []
    with progress_bars(console, progress) as bars:
        for task in tasks:
            total = task.size(ctx.settings)
            bar = bars.add_task(f"{label}{task.name}", total=total)
            ctx.advance = lambda n, bar=bar: bars.advance(bar, n)
            results.append(task.evaluate(ctx))
            bars.update(bar, completed=total)
    ctx.advance = lambda n: None
    return results

