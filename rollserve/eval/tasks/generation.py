"""(a) Generation scored against a gold answer, with pass@k and maj@k over n samples per
prompt (one request per prompt asks for all n, so the prompt is prefilled once), and the
standard error of every metric over problems (stats.py).

Scorers:
  math            final answer extracted, equal after normalization (exact, fast)
  math_verify     the same, then math-verify's symbolic equivalence (answer_check.py)
  integer         AIME: the final answer as an integer equals the gold integer
  choice          multiple choice answered in text: the chosen letter equals the gold one
  exact_match     the whole generation equals the target (whitespace collapsed)
  exact_match_ci  the same, ignoring case
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import rollserve.eval.answer_check as answer_check
import rollserve.eval.scorers as scorers
import rollserve.eval.stats as stats
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult
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

_LETTER_PATTERNS = [re.compile(p) for p in (
    r"[Aa]nswer(?: is)?[:\s]*\(?([A-J])\b", r"\\boxed\{\s*\(?([A-J])\)?\s*\}", r"^\s*\(?([A-J])[).:\s]",
    r"^\s*([A-J])\s*$", r"\(([A-J])\)")]


def choice_letter(text: str) -> Optional[str]:
    """The letter a generation picks: "answer is (B)", "\\boxed{B}", a leading "B." or
    "(B)", else the first "(B)" anywhere; None if it names none."""
    for pattern in _LETTER_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def integer_answer(text: str) -> Optional[int]:
    value = scorers.parse_number(scorers.extract_final_answer(text) or "")
    return int(value) if value is not None and value.denominator == 1 else None


def _verdict_math(text: str, gold: str) -> answer_check.Verdict:
    return answer_check.check(text, gold)


def _verdict_integer(text: str, gold: str) -> answer_check.Verdict:
    value = integer_answer(text)
    gold_value = integer_answer(gold)
    correct = value is not None and value == gold_value
    return answer_check.Verdict(scorers.extract_final_answer(text),
                                None if value is None else str(value), correct,
                                answer_check.EXACT if correct else None)


def _verdict_choice(text: str, gold: str) -> answer_check.Verdict:
    letter = choice_letter(text)
    correct = letter is not None and letter == gold.strip().upper()
    return answer_check.Verdict(letter, letter, correct, answer_check.EXACT if correct else None)


# scorer name -> verdict on (generation, gold); majority voting counts the verdicts' keys
VERDICT_RULES: Dict[str, Callable[[str, str], answer_check.Verdict]] = {
    "math_verify": _verdict_math, "integer": _verdict_integer, "choice": _verdict_choice,
}
SCORERS = (*ANSWER_RULES, *VERDICT_RULES)


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
    overrides: Dict[str, object] = field(default_factory=dict)  # settings of this task (n, ...)

    def __post_init__(self):
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer {self.scorer!r} is not one of {sorted(SCORERS)}")

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
        samples = [self.score(row, prompt, p["stop"], texts)
                   for row, prompt, p, texts in zip(rows, prompts, params, outputs)]
        return TaskResult(task=self.name, kind=self.kind,
                          metrics=sample_metrics(samples, ctx.settings.n), samples=samples,
                          num_examples=len(rows), seconds=time.perf_counter() - start)

    def score(self, row: dict, prompt: str, stop: List[str], texts: List[str]) -> dict:
        """One problem's record: every sample's extracted answer, its key, and whether
        it is right (and, for math_verify, how that was decided)."""
        target = str(row["answer"])
        record = {"id": row["id"], "prompt": prompt, "stop": stop, "target": target,
                  "outputs": texts}
        if self.scorer in ANSWER_RULES:
            answer_of, gold_of = ANSWER_RULES[self.scorer]
            gold = gold_of(target)
            answers = [answer_of(t) for t in texts]
            return {**record, "answers": answers,
                    "correct": [a is not None and a == gold for a in answers], "gold_key": gold}
        verdicts = [VERDICT_RULES[self.scorer](t, target) for t in texts]
        return {**record, "extracted": [v.extracted for v in verdicts],
                "answers": [v.key for v in verdicts], "correct": [v.correct for v in verdicts],
                "verified": [v.how for v in verdicts]}


def majority_correct(sample: dict, k: int) -> float:
    """maj@k of one problem: whether the answer most of its first k samples agree on is
    right (a sample with that answer was judged correct)."""
    keys, correct = sample["answers"][:k], sample["correct"][:k]
    winner = scorers.majority_answer(keys)
    return float(winner is not None and any(c for a, c in zip(keys, correct) if a == winner))


def sample_metrics(samples: List[dict], n: int) -> Dict[str, float]:
    """exact_match (mean correctness of the samples), and for n > 1 pass@k and maj@k for
    k in scorers.k_values(n); each averaged over problems, with its standard error."""
    per_problem: Dict[str, List[float]] = {
        "exact_match": [sum(s["correct"]) / len(s["correct"]) for s in samples]}
    if n > 1:
        for k in scorers.k_values(n):
            per_problem[f"pass@{k}"] = [scorers.pass_at_k(len(s["correct"]), sum(s["correct"]), k)
                                        for s in samples]
            per_problem[f"maj@{k}"] = [majority_correct(s, k) for s in samples]
    return stats.means_with_stderr(per_problem)
