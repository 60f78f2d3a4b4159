"""The built-in task sets and loading user tasks from JSONL / parquet."""

import json

import pytest

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval import scorers
from rollserve.eval.tasks import BUILTIN_TASKS, load_tasks
from rollserve.eval.tasks import builtin_data as data
from rollserve.eval.tasks.base import EvalSettings
from rollserve.eval.tasks.perplexity import windows
from rollserve.eval.tasks.requests import encode_pair
from rollserve.eval.tasks.user import parse_spec


def test_builtin_sets_are_deterministic_and_well_formed():
    assert data.arithmetic_problems() == data.arithmetic_problems()
    problems = data.arithmetic_problems()
    assert len({p["question"] for p in problems}) == len(problems)
    assert {p["kind"] for p in problems} >= {"add", "fraction", "divide"}
    for p in problems:  # every answer is an exact number the scorer can read
        assert scorers.parse_number(p["answer"]) is not None
    for _, _, answer in data.ARITHMETIC_FEWSHOT:  # few-shot answers end like GSM8K's
        assert scorers.score_math(f"work\n#### {answer}", answer)
    facts = data.fact_questions()
    assert facts == data.fact_questions()
    for q in facts:
        assert len(q["choices"]) == len(set(q["choices"])) == 4 and 0 <= q["gold"] < 4
    texts = data.perplexity_texts()
    assert len(texts) > 10 and all(t["text"] for t in texts)


def test_load_tasks_builtin_and_errors():
    tasks = load_tasks("arithmetic, facts,perplexity,reward")
    assert [(t.name, t.kind) for t in tasks] == [("arithmetic", "generation"),
                                                 ("facts", "multiple_choice"),
                                                 ("perplexity", "perplexity"), ("reward", "reward")]
    assert set(BUILTIN_TASKS) == {"arithmetic", "facts", "perplexity", "reward"}
    assert tasks[0].size(EvalSettings(limit=5)) == 5
    with pytest.raises(InvalidRequest, match="unknown task 'nope'"):
        load_tasks("facts,nope")
    with pytest.raises(InvalidRequest, match="unique"):
        load_tasks("facts,facts")
    with pytest.raises(InvalidRequest):
        load_tasks(" , ")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_user_tasks_jsonl_each_scorer(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"prompt": "2+2=", "answer": 4},
                                             {"prompt": "x", "answer": "y"}])
    mc = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Sky?", "choices": ["blue", "red"],
                                              "gold": "blue"}])
    txt = write_jsonl(tmp_path / "txt.jsonl", [{"text": "hello world", "id": "a"}])
    rm = write_jsonl(tmp_path / "rm.jsonl", [{"prompt": "say hi"}])
    tasks = load_tasks(f"{qa},mine={qa}#exact_match,{mc},{txt},{rm}")
    assert [(t.name, t.kind) for t in tasks] == [
        ("qa", "generation"), ("mine", "generation"), ("mc", "multiple_choice"),
        ("txt", "perplexity"), ("rm", "reward")]
    assert tasks[0].scorer == "math" and tasks[1].scorer == "exact_match"
    assert tasks[0].rows[0] == {"id": "0", "prompt": "2+2=", "answer": "4", "stop": ["\n\n"]}
    assert tasks[2].rows[0]["gold"] == 0 and tasks[2].rows[0]["context"] == "Sky?"
    assert tasks[3].rows[0]["id"] == "a"


def test_user_task_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mc.parquet"
    pq.write_table(pa.table({"context": ["Q1", "Q2"], "choices": [["a", "b"], ["c", "d"]],
                             "gold": [1, 0]}), str(path))
    task = load_tasks(f"{path}#acc")[0]
    assert task.kind == "multiple_choice" and [r["gold"] for r in task.rows] == [1, 0]


def test_user_task_errors_name_row_and_field(tmp_path):
    bad_mc = write_jsonl(tmp_path / "m.jsonl", [{"context": "Q", "choices": ["a", "b"], "gold": 5}])
    with pytest.raises(InvalidRequest, match=r"m.jsonl\[0\].gold"):
        load_tasks(bad_mc)
    bad_gen = write_jsonl(tmp_path / "g.jsonl", [{"prompt": "Q", "answer": 1},
                                                 {"prompt": 3, "answer": 1}])
    with pytest.raises(InvalidRequest, match=r"g.jsonl\[1\].prompt"):
        load_tasks(bad_gen)
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "answer": 1}\n{oops\n')
    with pytest.raises(InvalidRequest, match="broken.jsonl:2"):
        load_tasks(str(tmp_path / "broken.jsonl"))
    with pytest.raises(InvalidRequest, match="no such file"):
        load_tasks(str(tmp_path / "missing.jsonl"))
    with pytest.raises(InvalidRequest, match="scorer 'bleu'"):
        parse_spec("x.jsonl#bleu")


class CharTokenizer:
    """One token per character, so token boundaries are easy to check."""

    bos_token_id, eos_token_id = None, 0

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]


def test_encode_pair_moves_trailing_space_to_continuation():
    context, continuation = encode_pair(CharTokenizer(), "Answer: ", "Paris")
    assert context == [ord(c) for c in "Answer:"]
    assert continuation == [ord(c) for c in " Paris"]


def test_perplexity_windows_cover_each_token_once():
    tokens = list(range(10, 21))
    pairs = windows(tokens, prefix=0, max_len=4)
    assert pairs[0] == ([0], [10, 11, 12])
    assert [t for _, cont in pairs for t in cont] == tokens
    assert all(len(ctx) + len(cont) <= 4 for ctx, cont in pairs)
    assert pairs[1][0] == [12]  # each later window is conditioned on the token before it
