"""Evaluation through the RolloutClient: tasks (generation with math answers, multiple
choice by loglikelihood, perplexity, reward model, user JSONL/parquet), a runner, and a
watcher that scores every checkpoint of a training run (`rollserve eval run|watch`).

    from rollserve.eval import EvalContext, EvalSettings, load_tasks, run_tasks
    results = run_tasks(EvalContext(client, EvalSettings(limit=20)), load_tasks("facts"))
"""

from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks import DEFAULT_TASKS, load_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings, TaskResult
from rollserve.eval.watch import WatchOptions, Watcher

__all__ = ["DEFAULT_TASKS", "EvalContext", "EvalSettings", "TaskResult", "WatchOptions", "Watcher",
           "load_tasks", "run_tasks"]
