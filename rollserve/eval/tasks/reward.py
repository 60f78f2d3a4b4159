"""(d) Reward-model score of generated answers: the policy server answers each prompt,
a reward model (a /classify server, by default the same one) scores the
conversation [user: question, assistant: answer]."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import List

import rollserve.eval.stats as stats
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult, mean
from rollserve.eval.tasks.requests import generate_texts, reward_scores


@dataclass
class RewardTask(Task):
    name: str
    rows: List[dict]  # {"id", "prompt", "question"}: prompt goes to the policy, question to the RM
    stop: List[str] = field(default_factory=list)
    max_new_tokens: int = 128
    label: int = 0  # which output of the reward model is the reward
    kind: str = "reward"

    def size(self, settings: EvalSettings) -> int:
        return 2 * len(settings.take(self.rows))  # generate, then score

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        start = time.perf_counter()
        rows = ctx.settings.take(self.rows)
        stop = self.stop if ctx.settings.stop is None else list(ctx.settings.stop)
        outputs = generate_texts(ctx, [ctx.render_prompt(r["prompt"]) for r in rows],
                                 max_new_tokens=ctx.settings.max_new_tokens or self.max_new_tokens,
                                 stop=stop)
        conversations = [conversation(row, text) for row, texts in zip(rows, outputs)
                         for text in texts]
        rewards = iter(reward_scores(ctx, conversations, self.label))
        samples = []
        for row, texts in zip(rows, outputs):
            samples.append({"id": row["id"], "prompt": row["prompt"],
                            "question": row.get("question", row["prompt"]), "outputs": texts,
                            "rewards": [next(rewards) for _ in texts]})
            ctx.advance(1)
        flat = [r for s in samples for r in s["rewards"]]
        average = mean(flat)
        spread = math.sqrt(mean((r - average) ** 2 for r in flat)) if flat else float("nan")
        # problems are the independent units: the standard error of the mean per-problem reward
        metrics = {"reward_mean": average, "reward_std": spread,
                   "reward_mean_stderr": stats.mean_stderr([mean(s["rewards"]) for s in samples])}
        if ctx.settings.n > 1:
            metrics["reward_best_of_n"] = mean(max(s["rewards"]) for s in samples)
        return TaskResult(task=self.name, kind=self.kind, metrics=metrics, samples=samples,
                          num_examples=len(rows), seconds=time.perf_counter() - start)


def conversation(row: dict, answer: str) -> List[dict]:
    """What the reward model scores: the question and the policy's answer."""
    return [{"role": "user", "content": row.get("question", row["prompt"])},
            {"role": "assistant", "content": answer.strip()}]
