"""(a) Generation scored by exact match (math-normalized or plain), with pass@k and
maj@k over n samples per prompt."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from rollserve.eval import scorers
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult, mean
from rollserve.eval.tasks.requests import generate_texts

# scorer name -> (answer key of a generation, key of the gold answer); equal keys = correct
AnswerRule = Tuple[Callable[[str], Optional[str]], Callable[[str], Optional[str]]]
ANSWER_RULES: Dict[str, AnswerRule] = {
    "math": (lambda text: scorers.normalize_math_answer(scorers.extract_final_answer(text)),
             scorers.normalize_math_answer),
    "exact_match": (scorers.normalize_text, scorers.normalize_text),
    "exact_match_ci": (lambda t: scorers.normalize_text(t).lower(),
                       lambda t: scorers.normalize_text(t).lower()),
}


@dataclass
class GenerationTask(Task):
    """rows: {"id", "prompt", "answer"} and optionally "stop" (a list) and "max_new_tokens"
    of their own. Stop strings: --stop, else the row's, else the task's; generation
    length: --max-new-tokens, else the row's, else the task's."""

    name: str
    rows: List[dict]
    scorer: str = "math"
    stop: List[str] = field(default_factory=list)
    max_new_tokens: int = 128
    kind: str = "generation"

    def __post_init__(self):
        if self.scorer not in ANSWER_RULES:
            raise ValueError(f"scorer {self.scorer!r} is not one of {sorted(ANSWER_RULES)}")

    def size(self, settings: EvalSettings) -> int:
        return len(settings.take(self.rows))

    def request_params(self, row: dict, settings: EvalSettings) -> dict:
        stop = settings.stop if settings.stop is not None else row.get("stop", self.stop)
        return {"stop": list(stop or []),
                "max_new_tokens": settings.max_new_tokens or row.get("max_new_tokens")
                or self.max_new_tokens}

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        start = time.perf_counter()
        rows = ctx.settings.take(self.rows)
        prompts = [ctx.render_prompt(r["prompt"]) for r in rows]
        params = [self.request_params(r, ctx.settings) for r in rows]
        outputs = generate_texts(ctx, prompts, max_new_tokens=self.max_new_tokens,
                                 per_prompt=params)
        samples = [self._score(row, prompt, p["stop"], texts)
                   for row, prompt, p, texts in zip(rows, prompts, params, outputs)]
        return TaskResult(task=self.name, kind=self.kind,
                          metrics=self._metrics(samples, ctx.settings.n), samples=samples,
                          num_examples=len(rows), seconds=time.perf_counter() - start)

    def _score(self, row: dict, prompt: str, stop: List[str], texts: List[str]) -> dict:
        answer_of, gold_of = ANSWER_RULES[self.scorer]
        gold = gold_of(str(row["answer"]))
        answers = [answer_of(t) for t in texts]
        correct = [a is not None and a == gold for a in answers]
        return {"id": row["id"], "prompt": prompt, "stop": stop, "target": str(row["answer"]),
                "outputs": texts, "answers": answers, "correct": correct, "gold_key": gold}

    @staticmethod
    def _metrics(samples: List[dict], n: int) -> Dict[str, float]:
        metrics = {"exact_match": mean(mean(s["correct"]) for s in samples)}
        if n > 1:
            for k in scorers.k_values(n):
                metrics[f"pass@{k}"] = mean(scorers.pass_at_k(n, sum(s["correct"]), k)
                                            for s in samples)
                metrics[f"maj@{k}"] = mean(scorers.maj_at_k(s["answers"], s["gold_key"], k)
                                           for s in samples)
        return metrics
