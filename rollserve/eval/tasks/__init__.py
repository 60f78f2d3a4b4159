"""Task registry: the built-in tasks by name, the benchmarks (benchmarks.py) from local
data, and user tasks from data files.

`load_tasks("arithmetic,gsm8k:n=4,math500:limit=50,data/qa.jsonl#exact_match")` -> [Task, ...]
A built-in task or benchmark takes options after its name, colon-separated; n,
temperature, top_p, max_new_tokens and limit set the task's own sampling and size.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.tasks import builtin_data as data
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult
from rollserve.eval.tasks.benchmarks import BENCHMARKS, Options, benchmark_task, split_spec
from rollserve.eval.tasks.generation import GenerationTask
from rollserve.eval.tasks.multiple_choice import MultipleChoiceTask
from rollserve.eval.tasks.perplexity import PerplexityTask
from rollserve.eval.tasks.reward import RewardTask
from rollserve.eval.tasks.user import is_user_spec, user_task

ARITHMETIC_STOP = ["\n\n", "Question:"]


def arithmetic() -> Task:
    rows = [{"id": p["id"], "prompt": data.arithmetic_prompt(p["question"]), "answer": p["answer"]}
            for p in data.arithmetic_problems()]
    return GenerationTask("arithmetic", rows, scorer="math", stop=ARITHMETIC_STOP, max_new_tokens=64)


def facts() -> Task:
    rows = [{"id": q["id"], "context": data.fact_context(q["question"]), "choices": q["choices"],
             "gold": q["gold"]} for q in data.fact_questions()]
    return MultipleChoiceTask("facts", rows)


def perplexity() -> Task:
    return PerplexityTask("perplexity", data.perplexity_texts())


def reward() -> Task:
    rows = [{"id": p["id"], "prompt": data.arithmetic_prompt(p["question"]),
             "question": p["question"]} for p in data.arithmetic_problems()]
    return RewardTask("reward", rows, stop=ARITHMETIC_STOP, max_new_tokens=64)


BUILTIN_TASKS: Dict[str, Callable[[], Task]] = {
    "arithmetic": arithmetic, "facts": facts, "perplexity": perplexity, "reward": reward,
}
DEFAULT_TASKS = "arithmetic,facts,perplexity"


def load_tasks(spec: str, data_dir: Optional[str] = None) -> List[Task]:
    """Comma-separated built-in names and benchmarks (each with `:key=value` options), and
    `[NAME=]PATH[#SCORER]` data files. data_dir: where benchmark data is looked for."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise InvalidRequest("tasks", "name at least one task")
    tasks = []
    for part in names:
        head = part.split(":", 1)[0]
        name, values = split_spec(part) if head in BUILTIN_TASKS or head in BENCHMARKS else (part, {})
        if name in BUILTIN_TASKS:
            opts = Options(name, values)
            task = BUILTIN_TASKS[name]()
            task.overrides = opts.settings()
            opts.check_all_read([])
            tasks.append(task)
        elif name in BENCHMARKS:
            tasks.append(benchmark_task(name, values, data_dir))
        elif is_user_spec(part):
            tasks.append(user_task(part))
        else:
            raise InvalidRequest("tasks", f"unknown task {name!r}: built-in tasks are "
                                          f"{sorted(BUILTIN_TASKS)}, benchmarks "
                                          f"{sorted(BENCHMARKS)}, or give a .jsonl/.parquet file")
    seen = [t.name for t in tasks]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise InvalidRequest("tasks", f"task names must be unique, repeated: {duplicates}")
    return tasks


__all__ = ["BENCHMARKS", "BUILTIN_TASKS", "DEFAULT_TASKS", "EvalContext", "EvalSettings", "Task", "TaskResult",
           "load_tasks"]
