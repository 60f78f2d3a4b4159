"""Draws the reward curve of one or more runs from their metrics.jsonl.

    python examples/training/plot_rewards.py RUN_A/metrics.jsonl RUN_B/metrics.jsonl \
        --label "sync disk" --label "sync tensor" --out reward_curve.png
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Tuple


def read_run(path: str) -> Tuple[List[dict], Dict]:
    steps, summary = [], {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "summary" in record:
                summary = record["summary"]
            else:
                steps.append(record)
    return steps, summary


def moving_average(values: List[float], window: int) -> List[float]:
    out = []
    for i in range(len(values)):
        chunk = values[max(0, i - window + 1):i + 1]
        out.append(sum(chunk) / len(chunk))
    return out


DEFAULT_TITLE = "GRPO on 'What is a+b?' (CPU, rollouts from rollserve)"


def plot(paths: List[str], labels: List[str], out: str, metric: str = "reward/exact_answer",
         window: int = 5, title: str = DEFAULT_TITLE) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for path, label in zip(paths, labels):
        steps, summary = read_run(path)
        xs = [r["step"] for r in steps]
        ys = [r[metric] for r in steps]
        line, = ax.plot(xs, ys, alpha=0.35, marker=".", linestyle="-")
        ax.plot(xs, moving_average(ys, window), color=line.get_color(), linewidth=2,
                label=f"{label} ({window}-step mean)")
        greedy = [(x, summary.get(key)) for key, x in (("greedy_accuracy_start", 0),
                                                       ("greedy_accuracy_end", xs[-1] if xs else 0))]
        greedy = [(x, y) for x, y in greedy if y is not None]
        if greedy:
            ax.scatter(*zip(*greedy), color=line.get_color(), marker="*", s=140, zorder=3,
                       label=f"{label}: greedy accuracy, all 100 problems")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(f"{metric} of the sampled group")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("metrics", nargs="+", help="metrics.jsonl of each run")
    p.add_argument("--label", action="append", default=[], help="one per run, in order")
    p.add_argument("--out", default="reward_curve.png")
    p.add_argument("--metric", default="reward/exact_answer")
    p.add_argument("--window", type=int, default=5)
    p.add_argument("--title", default=DEFAULT_TITLE)
    args = p.parse_args(argv)
    labels = args.label + args.metrics[len(args.label):]
    plot(args.metrics, labels, args.out, args.metric, args.window, args.title)


if __name__ == "__main__":
    main()
