"""(f) Code generation scored by running tests (HumanEval, MBPP): each sampled
completion is put into a program with the problem's tests and run in the sandbox
(sandbox.py: time, memory and process limits, no network); a sample passes when the
program exits 0. pass@k over n samples per problem, with standard errors."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List

import rollserve.eval.sandbox as sandbox
import rollserve.eval.scorers as scorers
import rollserve.eval.stats as stats
from rollserve.eval.tasks.base import EvalContext, Task, TaskResult
from rollserve.eval.tasks.requests import generate_texts

# A completion of a function body ends where the next top-level statement starts: the
# stop sequences of the Codex paper, which lm-eval's humaneval uses too.
HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


@dataclass
class CodeTask(Task):
    """rows: {"id", "prompt", "program_prefix", "program_suffix"}; the program run for a
    completion is program_prefix + completion + program_suffix (HumanEval: the prompt's
    signature and docstring, the completion, the tests and `check(entry_point)`)."""

    name: str
    rows: List[dict]
    stop: List[str] = field(default_factory=lambda: list(HUMANEVAL_STOP))
    max_new_tokens: int = 512
    limits: sandbox.Limits = field(default_factory=sandbox.Limits)
    workers: int = max(1, min(4, (os.cpu_count() or 2)))  # programs run at once
    kind: str = "code"
    overrides: Dict[str, object] = field(default_factory=dict)

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        start = time.perf_counter()
        rows = ctx.settings.take(self.rows)
        prompts = [ctx.render_prompt(r["prompt"]) for r in rows]
        stop = list(ctx.settings.stop) if ctx.settings.stop is not None else self.stop
        params = [{"stop": stop, "max_new_tokens": ctx.settings.max_new_tokens or self.max_new_tokens}
                  for _ in rows]
        outputs = generate_texts(ctx, prompts, max_new_tokens=self.max_new_tokens, per_prompt=params)
        samples = self.judge(rows, prompts, stop, outputs)
        return TaskResult(task=self.name, kind=self.kind,
                          metrics=code_metrics(samples, ctx.settings.n), samples=samples,
                          num_examples=len(rows), seconds=time.perf_counter() - start)

    def judge(self, rows: List[dict], prompts: List[str], stop: List[str],
              outputs: List[List[str]]) -> List[dict]:
        """Runs every completion's program in the sandbox; one record per problem."""
        programs = [(i, row["program_prefix"] + text + row["program_suffix"])
                    for i, (row, texts) in enumerate(zip(rows, outputs)) for text in texts]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="eval-sandbox") as pool:
            results = list(pool.map(lambda item: sandbox.run_program(item[1], self.limits), programs))
        per_row: List[List[sandbox.Outcome]] = [[] for _ in rows]
        for (i, _), outcome in zip(programs, results):
            per_row[i].append(outcome)
        return [{"id": row["id"], "prompt": prompt, "stop": stop, "outputs": texts,
                 "target": row.get("reference", ""), "correct": [o.passed for o in outcomes],
                 "status": [o.status for o in outcomes],
                 "error": [o.output[-300:] if not o.passed else "" for o in outcomes]}
                for row, prompt, texts, outcomes in zip(rows, prompts, outputs, per_row)]


def code_metrics(samples: List[dict], n: int) -> Dict[str, float]:
    """pass@1 (the mean pass rate of the samples) and, for n > 1, pass@k for each k."""
    per_problem = {f"pass@{k}": [scorers.pass_at_k(len(s["correct"]), sum(s["correct"]), k)
                                 for s in samples] for k in scorers.k_values(n)}
    return stats.means_with_stderr(per_problem)


def humaneval_row(problem: dict) -> dict:
    """A HumanEval problem (task_id, prompt, canonical_solution, test, entry_point)."""
    return {"id": problem["task_id"], "prompt": problem["prompt"],
            "program_prefix": problem["prompt"],
            "program_suffix": f"\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n",
            "reference": problem.get("canonical_solution", "")}


MBPP_STOP = ["[DONE]", "\n[BEGIN]", "\nYou are an expert"]


def mbpp_prompt(problem: dict) -> str:
    """lm-evaluation-harness's MBPP prompt (Austin et al. 2021), without its few shots."""
    tests = "\n".join(problem["test_list"])
    return (f"You are an expert Python programmer, and here is your task: {problem['text']} "
            f"Your code should pass these tests:\n\n{tests}\n[BEGIN]\n")


def mbpp_row(problem: dict) -> dict:
    """An MBPP problem (task_id, text, code, test_list, test_setup_code)."""
    setup = problem.get("test_setup_code") or ""
    tests = "\n".join(problem["test_list"])
    return {"id": str(problem["task_id"]), "prompt": mbpp_prompt(problem),
            "program_prefix": f"{setup}\n" if setup else "",
            "program_suffix": f"\n\n{tests}\n", "reference": problem.get("code", "")}
