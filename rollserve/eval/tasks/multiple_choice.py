"""(b) Multiple choice by the loglikelihood of each option given the question,
read from prompt logprobs; acc and acc_norm as lm-evaluation-harness computes them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List

import rollserve.eval.stats as stats
from rollserve.eval.scorers import multiple_choice_scores
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult
from rollserve.eval.tasks.requests import encode_pair, loglikelihoods, prefix_token_id


@dataclass
class MultipleChoiceTask(Task):
    name: str
    rows: List[dict]  # {"id", "context", "choices": [str], "gold": int}
    target_delimiter: str = " "
    kind: str = "multiple_choice"
    overrides: Dict[str, object] = field(default_factory=dict)

    def size(self, settings: EvalSettings) -> int:
        return len(settings.take(self.rows))

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        start = time.perf_counter()
        rows = ctx.settings.take(self.rows)
        pairs = [self._pair(ctx.tokenizer, row["context"], choice)
                 for row in rows for choice in row["choices"]]
        lls = iter(loglikelihoods(ctx, pairs, units_per_pair=len(rows) / max(len(pairs), 1)))
        samples = []
        for row in rows:
            row_lls = [next(lls) for _ in row["choices"]]
            scores = multiple_choice_scores(row_lls, row["choices"], row["gold"])
            samples.append({"id": row["id"], "prompt": row["context"], "choices": row["choices"],
                            "target": row["choices"][row["gold"]], "gold": row["gold"],
                            "loglikelihoods": row_lls, "output": row["choices"][scores["pred"]],
                            **scores})
        metrics = stats.means_with_stderr({"acc": [s["acc"] for s in samples],
                                           "acc_norm": [s["acc_norm"] for s in samples]})
        return TaskResult(task=self.name, kind=self.kind, metrics=metrics, samples=samples,
                          num_examples=len(rows), seconds=time.perf_counter() - start)

    def _pair(self, tokenizer, context: str, choice: str):
        context_ids, continuation = encode_pair(tokenizer, context, self.target_delimiter + choice)
        # no context (or only spaces): score the choice after the BOS/EOS token, as lm-eval does
        return context_ids or [prefix_token_id(tokenizer)], continuation
