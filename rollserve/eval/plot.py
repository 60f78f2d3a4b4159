"""metrics.png: one panel per task and distinct quantity over checkpoint steps.

* perplexity, word_perplexity and bits_per_byte are one quantity (each is a fixed
  transform of the corpus loglikelihood): one panel in bits per byte, with token
  perplexity on the right-hand axis; pass@k for every k share a panel, maj@k another.
* bounded metrics (accuracies, exact match, pass@k, maj@k) get the fixed range [0, 1], so
  a jump from 0.20 to 0.21 does not fill the panel.
* the baseline (step 0) is a labelled star, with a dotted line at its value.
* checkpoints without a score are vertical lines, styled by cause (broken checkpoint,
  incomplete write, not scorable, weight_version mismatch, task refused).
* a metric with a standard error (METRIC_stderr, stats.py) has a shaded band: the 95%
  interval (stats.band), so a move within the band reads as noise.
Only the row that stands for each (checkpoint, task) is drawn (report.standing_rows).
"""

from __future__ import annotations

import math
import os
import re
import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import rollserve.eval.stats as stats
from rollserve.eval.report import (FAILED, INCOMPLETE, METRICS_PNG, MISMATCH, NOT_SCORABLE, OK,
                                   RESULTS_CSV, STATUS_LABELS, TASK_FAILED, ResultsLog,
                                   standing_rows, write_csv)

PERPLEXITY_FAMILY = ("bits_per_byte", "perplexity", "word_perplexity")
FAMILIES = (("pass@k", re.compile(r"pass@\d+")), ("maj@k", re.compile(r"maj@\d+")))
BOUNDED = re.compile(r"exact_match|acc|acc_norm|accuracy|.*_acc|pass@\d+|maj@\d+|pass_rate")
FAILURE_STYLES = {FAILED: ("tab:red", "--"), INCOMPLETE: ("tab:orange", ":"),
                  NOT_SCORABLE: ("0.55", "-."), MISMATCH: ("tab:purple", (0, (5, 1, 1, 1))),
                  TASK_FAILED: ("tab:brown", (0, (1, 1)))}
BASELINE = "baseline"


@dataclass
class Panel:
    task: str
    title: str
    metrics: List[str]  # drawn on the left axis
    bounded: bool = False
    right: Optional[str] = None  # token perplexity on a second axis
    points: dict = field(default_factory=dict)  # metric -> [(step, value, checkpoint)]
    bands: dict = field(default_factory=dict)  # metric -> [(step, low, high)] where known


def is_bounded(metric: str) -> bool:
    return bool(BOUNDED.fullmatch(metric))


def panels(rows: Sequence[dict]) -> List[Panel]:
    """The panels the standing rows call for, by task, each with its points."""
    standing = standing_rows(rows)
    out = []
    for task in sorted({r["task"] for r in standing}):
        ok = [r for r in standing if r["task"] == task and r["status"] == OK]
        names = sorted({m for r in ok for m, v in r["metrics"].items()
                        if _finite(v) and not stats.is_stderr(m)})
        for title, metrics, right in _quantities(names):
            panel = Panel(task, f"{task}: {title}", metrics,
                          bounded=all(is_bounded(m) for m in metrics), right=right)
            for metric in metrics + ([right] if right else []):
                panel.points[metric] = [(r["step"], r["metrics"][metric], r["checkpoint"])
                                        for r in ok if _finite(r["metrics"].get(metric))]
                panel.bands[metric] = metric_bands(ok, metric, panel.bounded)
            out.append(panel)
    return out


def metric_bands(rows: Sequence[dict], metric: str, bounded: bool) -> list:
    """(step, low, high) of the 95% interval at each row with a finite standard error."""
    out = []
    for row in rows:
        value = row["metrics"].get(metric)
        if _finite(value):
            interval = stats.band(value, row["metrics"].get(stats.stderr_name(metric)), bounded,
                                  n=row.get("num_examples"))
            if interval is not None:
                out.append((row["step"], *interval))
    return out


def _quantities(names: List[str]):
    """(title, metrics, right-axis metric) per distinct quantity among a task's metrics."""
    left = list(names)
    family = [m for m in PERPLEXITY_FAMILY if m in left]
    if family:
        main = family[0]
        right = "perplexity" if main == "bits_per_byte" and "perplexity" in family else None
        yield (main.replace("_", " ") + (" (right: token perplexity)" if right else ""),
               [main], right)
        left = [m for m in left if m not in PERPLEXITY_FAMILY]
    for title, regex in FAMILIES:
        members = sorted((m for m in left if regex.fullmatch(m)), key=lambda m: int(m.split("@")[1]))
        if members:
            yield title, members, None
            left = [m for m in left if m not in members]
    for metric in left:
        yield metric, [metric], None


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def build_figure(rows: Sequence[dict]):
    """The matplotlib figure, or None when no checkpoint has a score yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    todo = panels(rows)
    if not todo:
        return None
    standing = standing_rows(rows)
    cols = min(3, len(todo))
    nrows = math.ceil(len(todo) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.3 * nrows + 0.6), squeeze=False)
    causes = set()
    for ax, panel in zip(axes.flat, todo):
        causes |= _draw_panel(ax, panel, [r for r in standing if r["task"] == panel.task])
    for ax in list(axes.flat)[len(todo):]:
        ax.set_visible(False)
    handles = [Line2D([], [], color="0.35", marker="*", markersize=11, linestyle=":",
                      label="baseline (step 0)")] if _has_baseline(todo) else []
    if any(p.bands.get(m) for p in todo for m in p.metrics):
        handles.append(Patch(color="tab:blue", alpha=0.18, label="95% interval (±1.96 stderr)"))
    handles += [Line2D([], [], color=FAILURE_STYLES[c][0], linestyle=FAILURE_STYLES[c][1],
                       label=STATUS_LABELS[c]) for c in FAILURE_STYLES if c in causes]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
                   frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return fig


def _has_baseline(todo: List[Panel]) -> bool:
    return any(c == BASELINE for p in todo for pts in p.points.values() for _, _, c in pts)


def _draw_panel(ax, panel: Panel, task_rows: List[dict]) -> set:
    for metric in panel.metrics:
        points = panel.points[metric]
        steps = [s for s, _, _ in points]
        values = [v for _, v, _ in points]
        line, = ax.plot(steps, values, marker="o", markersize=4, label=metric)
        band = panel.bands.get(metric) or []
        if band:
            ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                            color=line.get_color(), alpha=0.18, linewidth=0,
                            label=f"{metric} 95% CI" if len(panel.metrics) > 1 else None)
        for step, value, checkpoint in points:
            if checkpoint == BASELINE:
                ax.plot([step], [value], marker="*", markersize=13, color="0.35", zorder=5)
                ax.axhline(value, color="0.35", linestyle=":", linewidth=0.9)
                ax.annotate(BASELINE, (step, value), textcoords="offset points", xytext=(6, 6),
                            fontsize=8, color="0.25")
    if len(panel.metrics) > 1:
        ax.legend(fontsize=7, loc="best")
    if panel.bounded:
        ax.set_ylim(-0.03, 1.03)
    else:
        ax.margins(y=0.15)  # room for the baseline's label
    if panel.right:
        _perplexity_axis(ax, panel)
    causes = set()
    for row in task_rows:
        if row["status"] != OK and row["status"] in FAILURE_STYLES:
            color, style = FAILURE_STYLES[row["status"]]
            ax.axvline(row["step"], color=color, linestyle=style, linewidth=1.1)
            causes.add(row["status"])
    ax.set_title(panel.title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    return causes


def _perplexity_axis(ax, panel: Panel) -> None:
    """Token perplexity for the bits-per-byte axis: ppl = exp(r * bpb), r = ln(ppl) / bpb,
    which is bytes * ln 2 / tokens of the corpus (the same on every checkpoint)."""
    bpb = {s: v for s, v, _ in panel.points[panel.metrics[0]]}
    ratios = [math.log(p) / bpb[s] for s, p, _ in panel.points[panel.right]
              if s in bpb and bpb[s] > 0 and p > 0]
    if not ratios:
        return
    import numpy as np

    r = statistics.median(ratios)
    secondary = ax.secondary_yaxis(
        "right", functions=(lambda b: np.exp(np.minimum(r * np.asarray(b, float), 700.0)),
                            lambda p: np.log(np.maximum(np.asarray(p, float), 1e-300)) / r))
    secondary.set_ylabel("token perplexity", fontsize=8)


def plot_metrics(rows: List[dict], path: str) -> Optional[str]:
    """Writes the figure to `path` atomically; None when there is nothing to draw."""
    import matplotlib.pyplot as plt

    fig = build_figure(rows)
    if fig is None:
        return None
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def redraw(log: ResultsLog) -> None:
    """results.csv and metrics.png from the rows of results.jsonl."""
    rows = log.read()
    write_csv(rows, log.path(RESULTS_CSV))
    plot_metrics(rows, log.path(METRICS_PNG))
