"""lm-evaluation-harness's own task definitions, scored inside `eval watch` beside ours:
`--lm-eval-tasks gsm8k,arc_easy` (from lm-eval's installed registry) or names defined by
yamls under `--include-path`. Each checkpoint runs lm-eval's `local-completions` model
against the server the checkpoint was loaded into (its first replica), in this process.

lm-eval's request cache keys on the request alone, with nothing of the model's
identity, so a cached answer from one checkpoint would be served for the next: the
cache is never used (use_cache=None, cache_requests=False). Rows are recorded as
task `lm_eval:NAME` with lm-eval's metrics, `METRIC` for its "none" filter and
`METRIC[FILTER]` for the others, and its standard errors as `..._stderr`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from rollserve.core.sampling_params import InvalidRequest
import rollserve.eval.stats as stats
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult

logger = logging.getLogger("rollserve.eval")
PREFIX = "lm_eval:"
_LOCK = threading.Lock()  # lm-eval keeps global state: one evaluation at a time per process
_MANAGERS: Dict[tuple, object] = {}


def task_manager(names: Sequence[str], include_path: Optional[str]):
    """A TaskManager that knows every name: the include path alone when it defines them
    all (indexing lm-eval's whole registry takes half a minute), else with the registry.
    Unknown names are an error naming them."""
    from lm_eval.tasks import TaskManager

    key = (tuple(sorted(names)), include_path)
    if key in _MANAGERS:
        return _MANAGERS[key]
    manager = None
    if include_path:
        manager = TaskManager(include_path=include_path, include_defaults=False)
        if not all(name in manager.all_tasks for name in names):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include_path)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        raise InvalidRequest("lm_eval_tasks", f"lm-eval has no task {unknown}"
                             + (f" (in its registry or under {include_path})" if include_path else
                                " in its registry; pass --include-path for local yamls"))
    _MANAGERS[key] = manager
    return manager


def load_lm_eval_tasks(spec: str, include_path: Optional[str] = None) -> List["LmEvalTask"]:
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise InvalidRequest("lm_eval_tasks", "name at least one lm-eval task")
    try:
        import lm_eval  # noqa: F401
    except ImportError as e:
        raise InvalidRequest("lm_eval_tasks", "lm-evaluation-harness is not installed "
                                              "(pip install 'lm-eval[api]')") from e
    manager = task_manager(names, include_path)
    return [LmEvalTask(name, manager) for name in names]


def metric_key(raw: str) -> Optional[str]:
    """lm-eval's "acc,none" -> "acc", "exact_match,strict-match" -> "exact_match[strict-match]",
    "acc_stderr,none" -> "acc_stderr"; None for its non-metric keys ("alias")."""
    if "," not in raw:
        return None
    metric, filter_name = raw.split(",", 1)
    is_se = metric.endswith("_stderr")
    base = metric[:-len("_stderr")] if is_se else metric
    name = base if filter_name == "none" else f"{base}[{filter_name}]"
    return stats.stderr_name(name) if is_se else name


@dataclass
class LmEvalTask(Task):
    lm_eval_name: str
    manager: object = field(repr=False)
    kind: str = "lm_eval"

    def __post_init__(self):
        self.name = PREFIX + self.lm_eval_name

    def size(self, settings: EvalSettings) -> int:
        return 1  # lm-eval draws its own progress

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        from lm_eval import simple_evaluate

        start = time.perf_counter()
        info = ctx.client.get_model_info()  # fresh: the checkpoint just loaded
        ctx.weight_versions[info.get("weight_version")] += 1
        model = served_model_name(ctx.client)
        tokenizer = ctx.tokenizer_path or info.get("tokenizer_path") or info.get("model_path")
        s = ctx.settings
        model_args = {"base_url": f"{ctx.client.urls[0]}/v1/completions", "model": model,
                      "tokenizer_backend": "huggingface", "tokenizer": tokenizer,
                      "num_concurrent": s.batch_size, "max_retries": 1, "timeout": 600}
        with _LOCK:
            out = simple_evaluate(model="local-completions", model_args=model_args,
                                  tasks=[self.lm_eval_name], task_manager=self.manager,
                                  limit=s.limit, use_cache=None, cache_requests=False,
                                  log_samples=True, apply_chat_template=s.apply_chat_template,
                                  system_instruction=s.system_instruction,
                                  random_seed=s.seed or 0, bootstrap_iters=1000)
        # a version after the run as well: weights swapped meanwhile show as a mismatch
        ctx.weight_versions[ctx.client.get_model_info().get("weight_version")] += 1
        ctx.advance(1)
        results = out["results"].get(self.lm_eval_name) or out.get("groups", {}).get(
            self.lm_eval_name, {})
        metrics = {}
        for raw, value in results.items():
            key = metric_key(raw)
            if key and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[key] = float(value)
        samples = [_sample(doc) for doc in out.get("samples", {}).get(self.lm_eval_name, [])]
        n_samples = out.get("n-samples", {}).get(self.lm_eval_name, {})
        return TaskResult(task=self.name, kind=self.kind, metrics=metrics, samples=samples,
                          num_examples=int(n_samples.get("effective", len(samples))),
                          seconds=time.perf_counter() - start)


def served_model_name(client) -> str:
    """The name /v1/completions accepts (the server's first model card), which stays the
    served name when checkpoints are loaded into it."""
    return client._call("/v1/models", None, url=client.urls[0], method="GET")["data"][0]["id"]


def _sample(doc: dict) -> dict:
    """One lm-eval sample as our records: prompt, output, target, its metric values."""
    arguments = doc.get("arguments") or []
    if isinstance(arguments, dict):  # {"gen_args_0": {"arg_0": prompt, ...}, ...}
        arguments = list(arguments.values())
    first = arguments[0] if arguments else {}
    prompt = first.get("arg_0") if isinstance(first, dict) else (first[0] if first else "")
    responses = doc.get("filtered_resps") or []
    output = responses[0] if responses else ""
    if isinstance(output, (list, tuple)):
        output = output[0] if output else ""
    record = {"id": doc.get("doc_id"), "prompt": str(prompt), "output": str(output),
              "target": str(doc.get("target", ""))}
    if responses and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in responses):
        record["loglikelihoods"] = [float(r[0]) for r in responses]  # one per choice
    for metric in doc.get("metrics", []):
        if isinstance(doc.get(metric), (int, float)):
            record[metric] = doc[metric]
    return record
