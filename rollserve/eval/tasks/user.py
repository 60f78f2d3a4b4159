"""(e) User tasks from a JSONL or parquet file with a named scorer.

Spec: `[NAME=]PATH[#SCORER]`, e.g. `mydata.jsonl`, `qa=data/qa.parquet#exact_match`.
The scorer decides the kind of task and the fields each row needs:

- math, math_verify, integer, choice, exact_match, exact_match_ci -> generation: prompt,
  answer; optionally stop (or
  lm-eval's until: a string or a list) and max_gen_toks (or max_new_tokens)
- acc (or multiple_choice) -> multiple choice: context (or prompt / question), choices,
  gold (the index of the right choice, or its text)
- perplexity -> perplexity: text
- reward -> reward model: prompt

Without `#SCORER` it is guessed from the first row: choices -> acc, text -> perplexity,
answer -> math, otherwise reward. An optional `id` field names each row in the outputs.

Generation defaults follow lm-eval's generate_until: max_gen_toks 256, and stop at the
few-shot delimiter "\n\n". A few-shot prompt ("Question: ...\nAnswer: 4\n\nQuestion:
...\nAnswer:") also stops at its question label ("Question:"), since a model that has
answered goes on writing the next example, and the scorer would read that one's answer.
"""

from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Tuple

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.tasks.base import Task
from rollserve.eval.tasks.generation import SCORERS, GenerationTask
from rollserve.eval.tasks.multiple_choice import MultipleChoiceTask
from rollserve.eval.tasks.perplexity import PerplexityTask
from rollserve.eval.tasks.reward import RewardTask

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
MC_SCORERS = ("acc", "multiple_choice")
USER_SCORERS = (*SCORERS, *MC_SCORERS, "perplexity", "reward")
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default `until` when a task names none
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default max_gen_toks
LABEL = re.compile(r"([A-Z][A-Za-z ]{0,19}):")  # "Question:", "Q:", "Problem:" at a block's start


def default_stop(prompt: str) -> List[str]:
    """Stop strings for a prompt that names none: the few-shot delimiter, plus the label
    that opens the last block when an earlier block opens with it too (the format of
    the examples)."""
    stop = [FEWSHOT_DELIMITER]
    blocks = [b.lstrip("\n") for b in prompt.split(FEWSHOT_DELIMITER) if b.strip()]
    if len(blocks) >= 2:
        label = LABEL.match(blocks[-1])
        if label and any(b.startswith(label.group(0)) for b in blocks[:-1]):
            stop.append(label.group(0))
    return stop


def is_user_spec(spec: str) -> bool:
    path = spec.split("=", 1)[-1].split("#", 1)[0]
    return path.endswith(DATA_SUFFIXES)


def parse_spec(spec: str) -> Tuple[str, str, Optional[str]]:
    """(name, path, scorer or None)."""
    name, rest = spec.split("=", 1) if "=" in spec.split("#", 1)[0] else ("", spec)
    path, _, scorer = rest.partition("#")
    name = name or os.path.splitext(os.path.basename(path))[0]
    if scorer and scorer not in USER_SCORERS:
        raise InvalidRequest("tasks", f"{spec}: scorer {scorer!r} is not one of {list(USER_SCORERS)}")
    return name, path, scorer or None


def load_records(path: str) -> List[dict]:
    """Rows of a JSONL (one JSON object a line) or parquet file."""
    if not os.path.isfile(path):
        raise InvalidRequest("tasks", f"{path}: no such file")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise InvalidRequest("tasks", f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(row, dict):
                raise InvalidRequest("tasks", f"{path}:{lineno}: each line must be a JSON object")
            rows.append(row)
    if not rows:
        raise InvalidRequest("tasks", f"{path}: holds no rows")
    return rows


def guess_scorer(row: dict) -> str:
    if "choices" in row:
        return "acc"
    if "text" in row and "prompt" not in row:
        return "perplexity"
    return "math" if "answer" in row else "reward"


def user_task(spec: str) -> Task:
    name, path, scorer = parse_spec(spec)
    rows = load_records(path)
    scorer = scorer or guess_scorer(rows[0])
    fields = _Fields(path)
    if scorer in SCORERS:
        return GenerationTask(name, [fields.generation_row(r, i) for i, r in enumerate(rows)],
                              scorer=scorer, max_new_tokens=DEFAULT_MAX_GEN_TOKS)
    if scorer in MC_SCORERS:
        return MultipleChoiceTask(name, [fields.choice_row(r, i) for i, r in enumerate(rows)])
    if scorer == "perplexity":
        return PerplexityTask(name, [{"id": fields.id(r, i), "text": fields.text(r, i, "text")}
                                     for i, r in enumerate(rows)])
    return RewardTask(name, [{"id": fields.id(r, i), "prompt": fields.text(r, i, "prompt")}
                             for i, r in enumerate(rows)])


class _Fields:
    """Reads one field of a row, or says which row and field is wrong."""

    def __init__(self, path: str):
        self.path = path

    def bad(self, index: int, field: str, message: str) -> InvalidRequest:
        return InvalidRequest(f"{os.path.basename(self.path)}[{index}].{field}", message)

    def id(self, row: dict, index: int) -> str:
        return str(row.get("id", index))

    def text(self, row: dict, index: int, field: str, *alternatives: str) -> str:
        for name in (field, *alternatives):
            if isinstance(row.get(name), str):
                return row[name]
        raise self.bad(index, field, "must be a string")

    def answer(self, row: dict, index: int) -> str:
        value = row.get("answer")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.bad(index, "answer", "must be a string or a number")
        return str(value)

    def generation_row(self, row: dict, index: int) -> dict:
        prompt = self.text(row, index, "prompt")
        out = {"id": self.id(row, index), "prompt": prompt, "answer": self.answer(row, index),
               "stop": self.stop(row, index)}
        if out["stop"] is None:
            out["stop"] = default_stop(prompt)
        for field in ("max_gen_toks", "max_new_tokens"):
            if field in row:
                value = row[field]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise self.bad(index, field, "must be an integer >= 1")
                out["max_new_tokens"] = value
        return out

    def stop(self, row: dict, index: int) -> Optional[List[str]]:
        for field in ("stop", "until"):
            if field not in row:
                continue
            value = row[field]
            listed = [value] if isinstance(value, str) else value
            if not isinstance(listed, list) or not all(isinstance(v, str) and v for v in listed):
                raise self.bad(index, field, "must be a string or a list of non-empty strings")
            return list(listed)
        return None

    def choice_row(self, row: dict, index: int) -> dict:
        choices = row.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(
                isinstance(c, str) and c for c in choices):
            raise self.bad(index, "choices", "must be a list of at least 2 non-empty strings")
        gold = row.get("gold")
        if isinstance(gold, str) and gold in choices:
            gold = choices.index(gold)
        if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise self.bad(index, "gold", "must be the index of the right choice or its text")
        return {"id": self.id(row, index), "choices": list(choices), "gold": gold,
                "context": self.text(row, index, "context", "prompt", "question")}
