"""lm-evaluation-harness against the server's /v1/completions (`--model local-completions`),
on local task yamls with local data: a loglikelihood (multiple_choice) task and a
generate_until task. Its numbers must equal rollserve's own eval on the same data."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.tasks.generation import GenerationTask
from rollserve.eval.tasks.multiple_choice import MultipleChoiceTask
from tests.eval.lm_eval_files import MC_DOCS, MC_YAML, write_task

pytest.importorskip("lm_eval")

GEN_DOCS = [{"question": "2 + 2 =", "answer": "4"},
            {"question": "The capital of France is", "answer": "Paris"}]
PROMPT = "Question: {{question}}\nAnswer:"

GEN_YAML = """task: rs_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def run_lm_eval(tmp_path, url, model_dir):
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    write_task(tasks_dir, "rs_mc", MC_YAML, MC_DOCS)
    write_task(tasks_dir, "rs_gen", GEN_YAML, GEN_DOCS)
    out = tmp_path / "out"
    model_args = (f"base_url={url}/v1/completions,model={model_dir},"
                  f"tokenizer_backend=huggingface,tokenizer={model_dir},num_concurrent=4,max_retries=1")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
           "--tasks", "rs_mc,rs_gen", "--include_path", str(tasks_dir), "--output_path", str(out),
           "--log_samples"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results_file] = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    samples = {}
    for task in ("rs_mc", "rs_gen"):
        [path] = glob.glob(str(out / "**" / f"samples_{task}_*.jsonl"), recursive=True)
        with open(path) as f:
            samples[task] = sorted((json.loads(line) for line in f), key=lambda s: s["doc_id"])
    with open(results_file) as f:
        return json.load(f)["results"], samples


def test_lm_eval_local_completions_matches_rollserve(tmp_path, client, eval_server, eval_model_dir):
    client.update_weights_from_disk(eval_model_dir, weight_version="lm-eval")
    results, samples = run_lm_eval(tmp_path, eval_server, eval_model_dir)

    ctx = EvalContext(client=client, settings=EvalSettings(batch_size=5))
    prompt = PROMPT.replace("{{question}}", "{}")
    mc = MultipleChoiceTask("rs_mc", [{"id": str(i), "context": prompt.format(d["question"]),
                                       "choices": d["choices"], "gold": d["gold"]}
                                      for i, d in enumerate(MC_DOCS)])
    gen = GenerationTask("rs_gen", [{"id": str(i), "prompt": prompt.format(d["question"]),
                                     "answer": d["answer"]} for i, d in enumerate(GEN_DOCS)],
                         scorer="exact_match", stop=["\n"], max_new_tokens=8)
    ours_mc, ours_gen = run_tasks(ctx, [mc, gen], progress=False)

    # loglikelihood: lm-eval's per-choice values (echo + prompt logprobs over token ids)
    # equal ours (/generate with max_new_tokens 0 and logprob_start_len)
    for theirs, mine in zip(samples["rs_mc"], ours_mc.samples):
        lls = [float(resp[0]) for resp in theirs["filtered_resps"]]
        assert lls == pytest.approx(mine["loglikelihoods"], abs=2e-4)
        assert theirs["acc"] == mine["acc"] and theirs["acc_norm"] == mine["acc_norm"]
    assert results["rs_mc"]["acc,none"] == pytest.approx(ours_mc.metrics["acc"])
    assert results["rs_mc"]["acc_norm,none"] == pytest.approx(ours_mc.metrics["acc_norm"])

    # generate_until: the same greedy text, cut at the stop string
    for theirs, mine in zip(samples["rs_gen"], ours_gen.samples):
        assert theirs["filtered_resps"][0] == mine["outputs"][0]
        assert "\n" not in theirs["filtered_resps"][0]
    assert results["rs_gen"]["exact_match,none"] == pytest.approx(ours_gen.metrics["exact_match"])
