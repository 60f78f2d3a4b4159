"""Terminal output with rich: progress bars while tasks run, summary tables after."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from typing import Iterator, List, Optional, Sequence

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.table import Table

import rollserve.eval.stats as stats
from rollserve.eval.report import OK, STATUS_LABELS, metric_names, standing_rows
from rollserve.eval.tasks.base import TaskResult


def make_console(stderr: bool = False) -> Console:
    """On a terminal its width; into a file or pipe, wide enough that tables do not wrap."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 200)


@contextlib.contextmanager
def progress_bars(console: Console, enabled: bool = True) -> Iterator[Progress]:
    """Bars only on a terminal (logs and pipes get the tables, not redraw noise)."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                        disable=not (enabled and console.is_terminal), transient=False)
    with progress:
        yield progress


def format_value(value) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e3:
            return f"{value:.4f}"
        return f"{value:.1f}" if 1e3 <= abs(value) < 1e9 else f"{value:.3e}"
    return "" if value is None else str(value)


def with_stderr(metrics: dict, name: str, compact: bool = False) -> str:
    """"0.4000 ± 0.1633" (value and standard error), or the value alone; compact:
    "0.400±0.163", for tables with many columns."""
    fmt = _compact if compact else format_value
    value = metrics.get(name)
    stderr = metrics.get(stats.stderr_name(name))
    if isinstance(stderr, (int, float)) and math.isfinite(stderr) and isinstance(value, (int, float)):
        return f"{fmt(float(value))}±{fmt(float(stderr))}" if compact else \
            f"{fmt(float(value))} ± {fmt(float(stderr))}"
    return format_value(value)


def _compact(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else format_value(value)


def shown_metrics(metrics) -> List[str]:
    """The metrics a table shows as columns (standard errors go beside their metric)."""
    return [m for m in metrics if not stats.is_stderr(m)]


def results_table(results: Sequence[TaskResult], title: Optional[str] = None) -> Table:
    """One row per task and metric, each value with its standard error."""
    table = Table(title=title, caption="± is the standard error; the 95% interval is ±1.96 of it")
    for name, justify in (("task", "left"), ("metric", "left"), ("value ± stderr", "right"),
                          ("examples", "right"), ("seconds", "right")):
        table.add_column(name, justify=justify)
    for result in results:
        for i, metric in enumerate(shown_metrics(result.metrics)):
            first = i == 0
            table.add_row(result.task if first else "", metric,
                          with_stderr(result.metrics, metric),
                          str(result.num_examples) if first else "",
                          f"{result.seconds:.1f}" if first else "")
    return table


def history_table(rows: List[dict], title: Optional[str] = None) -> Table:
    """One row per checkpoint, one column per task/metric: the row that stands for each
    (checkpoint, task) in results.jsonl (a retried incomplete write shows its score)."""
    standing = standing_rows(rows)
    tasks = sorted({row["task"] for row in standing})
    columns = [(task, name) for task in tasks
               for name in shown_metrics(metric_names(r for r in standing
                                                      if r["task"] == task and r["status"] == OK))]
    any_failed = any(row.get("status") != OK for row in standing)
    caption = "value ± standard error" + ("; errors: in results.jsonl / results.csv"
                                          if any_failed else "")
    table = Table(title=title, caption=caption)
    table.add_column("step", justify="right")
    table.add_column("checkpoint", no_wrap=True)
    for task, name in columns:  # too narrow: digits fold onto a second line, never cut
        table.add_column(f"{task}\n{name}", justify="right", overflow="fold")
    table.add_column("status", no_wrap=True)
    by_checkpoint = {}
    for row in standing:
        by_checkpoint.setdefault((row["step"], row["checkpoint"]), {})[row["task"]] = row
    for (step, checkpoint), per_task in sorted(by_checkpoint.items()):
        values = [with_stderr(per_task[task]["metrics"], name, compact=True)
                  if task in per_task and per_task[task]["status"] == OK else ""
                  for task, name in columns]
        table.add_row(str(step), checkpoint, *values, checkpoint_status(per_task.values()))
    return table


def checkpoint_status(rows) -> str:
    """'ok', or the causes of the tasks without a score, e.g. 'incomplete write (2 of 2)'."""
    rows = list(rows)
    causes = {}
    for row in rows:
        if row.get("status") != OK:
            label = STATUS_LABELS.get(row.get("status"), str(row.get("status")))
            causes[label] = causes.get(label, 0) + 1
    if not causes:
        return "ok"
    return ", ".join(f"[red]{label} ({n} of {len(rows)})[/red]" for label, n in causes.items())


class ConsoleLogHandler(logging.Handler):
    """Log records through the rich console, so they print above live progress bars
    instead of tearing them."""

    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            style = "red" if record.levelno >= logging.WARNING else "dim"
            self.console.print(self.format(record), style=style, markup=False, highlight=False)
        except Exception:
            self.handleError(record)
