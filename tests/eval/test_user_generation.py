"""User generation tasks stop like lm-eval's generate_until (#26 item 4): `stop`/`until` and
`max_gen_toks` per row, the few-shot delimiter and question label by default, and an
optional chat template with a system instruction. The end-to-end test runs the real
default model (SmolLM2-135M-Instruct): on a few-shot prompt it answers, then goes on
writing the next "Question:" block, which a scorer without stop strings would read."""

from __future__ import annotations

import json

import pytest

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks import load_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.tasks.user import default_stop

SHOTS = [("What is the capital of Italy?", "Rome"), ("What is the capital of Japan?", "Tokyo"),
         ("What is the capital of Germany?", "Berlin")]
QUESTIONS = [("What is the capital of France?", "Paris"), ("What is the capital of Spain?", "Madrid"),
             ("What is the capital of England?", "London")]
FEWSHOT = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in SHOTS)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_default_stop_follows_the_fewshot_format():
    assert default_stop(FEWSHOT + "Question: Where?\nAnswer:") == ["\n\n", "Question:"]
    assert default_stop("Q: 1+1?\nA: 2\n\nQ: 2+2?\nA:") == ["\n\n", "Q:"]
    assert default_stop("Translate to French: cat") == ["\n\n"]  # zero-shot: lm-eval's default
    # a label that opens only the last block is not a format
    assert default_stop("Some context.\n\nQuestion: why?") == ["\n\n"]


def test_row_fields_stop_until_and_max_gen_toks(tmp_path):
    data = write_rows(tmp_path / "qa.jsonl", [
        {"prompt": "a", "answer": "1", "until": ["\n", "###"], "max_gen_toks": 7},
        {"prompt": "b", "answer": "2", "stop": "END"},
        {"prompt": FEWSHOT + "Question: c?\nAnswer:", "answer": "3"},
        {"prompt": "d", "answer": "4", "stop": []},
    ])
    [task] = load_tasks(f"{data}#exact_match")
    settings = EvalSettings()
    params = [task.request_params(r, settings) for r in task.rows]
    assert params == [{"stop": ["\n", "###"], "max_new_tokens": 7},
                      {"stop": ["END"], "max_new_tokens": 256},
                      {"stop": ["\n\n", "Question:"], "max_new_tokens": 256},
                      {"stop": [], "max_new_tokens": 256}]
    # flags win over rows: --stop, --max-gen-toks
    forced = EvalSettings(stop=["X"], max_new_tokens=3)
    assert task.request_params(task.rows[0], forced) == {"stop": ["X"], "max_new_tokens": 3}
    for bad, field in (({"until": [""]}, "until"), ({"stop": 3}, "stop"),
                       ({"max_gen_toks": 0}, "max_gen_toks")):
        path = write_rows(tmp_path / "bad.jsonl", [{"prompt": "p", "answer": "1", **bad}])
        with pytest.raises(InvalidRequest, match=rf"bad.jsonl\[0\].{field}"):
            load_tasks(f"{path}#exact_match")


@pytest.fixture(scope="module")
def smol_client(tmp_path_factory):
    """A server on the default model (SmolLM2-135M-Instruct), which knows capitals."""
    from rollserve.api.server import spawn_server, wait_until_healthy
    from rollserve.rollout.client import RolloutClient
    from rollserve.rollout.launch import stop_process_tree

    log_path = tmp_path_factory.mktemp("smol") / "server.log"
    with open(log_path, "w") as log:
        proc, url = spawn_server(["--max-total-tokens", "6000"], log_file=log)
        try:
            wait_until_healthy(url, proc, timeout=300)
            with RolloutClient(url, progress=False, timeout=300) as client:
                yield client
        finally:
            stop_process_tree(proc)


@pytest.mark.slow
def test_fewshot_user_task_stops_after_its_answer(tmp_path, smol_client):
    data = write_rows(tmp_path / "capitals.jsonl",
                      [{"prompt": FEWSHOT + f"Question: {q}\nAnswer:", "answer": a}
                       for q, a in QUESTIONS])
    [task] = load_tasks(f"capitals={data}#exact_match")
    ctx = EvalContext(client=smol_client, settings=EvalSettings(max_new_tokens=16))
    [result] = run_tasks(ctx, [task], progress=False)
    outputs = [s["outputs"][0] for s in result.samples]
    assert [o.strip() for o in outputs] == [a for _, a in QUESTIONS], outputs
    assert result.metrics["exact_match"] == 1.0
    assert all(s["stop"] == ["\n\n", "Question:"] for s in result.samples)


@pytest.mark.slow
def test_chat_template_and_system_instruction(tmp_path, smol_client):
    data = write_rows(tmp_path / "chat.jsonl", [{"prompt": "What is the capital of France?",
                                                 "answer": "Paris", "max_gen_toks": 12}])
    [task] = load_tasks(f"{data}#math")
    settings = EvalSettings(apply_chat_template=True, system_instruction="Answer in one word.")
    ctx = EvalContext(client=smol_client, settings=settings)
    [result] = run_tasks(ctx, [task], progress=False)
    expected = ctx.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Answer in one word."},
         {"role": "user", "content": "What is the capital of France?"}],
        tokenize=False, add_generation_prompt=True)
    [sample] = result.samples
    assert sample["prompt"] == expected and expected.endswith("<|im_start|>assistant\n")
    assert "Paris" in sample["outputs"][0]
    # without a template the instruction is a prefix, as lm-eval does
    plain = EvalContext(client=smol_client, settings=EvalSettings(system_instruction="Be brief."))
    assert plain.render_prompt("Hi") == "Be brief.\n\nHi"
