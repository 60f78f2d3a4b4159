"""`eval watch` with benchmarks against a real server: three checkpoints scored at pass@4
with standard errors and bands (results.jsonl/csv, the plot, wandb, the terminal table)
that a recomputation from the samples reproduces; lm-eval's own task (a local yaml)
scored per checkpoint beside ours, with no cache between checkpoints; and two servers
scoring checkpoints concurrently."""

from __future__ import annotations

import csv
import json
import os

import pytest
from rich.console import Console

from rollserve.api.server import spawn_server, wait_until_healthy
from rollserve.eval import plot, stats
from rollserve.eval.console import history_table
from rollserve.eval.report import OK, ResultsLog, standing_rows
from rollserve.eval.runner import run_tasks
from rollserve.eval.scorers import pass_at_k
from rollserve.eval.tasks import load_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.wandb_sync import WandbSync
from rollserve.eval.watch import WatchOptions, Watcher
from rollserve.rollout.launch import stop_process_tree
from tests.eval.bench_data import write_bench_data
from tests.eval.conftest import SERVER_ARGS, perturbed_copy
from tests.eval.lm_eval_files import MC_DOCS, MC_YAML, write_task
from tests.eval.wandb_files import history, newest_offline_run

def make_run(tmp_path, eval_model_dir, steps=(1, 2, 3)) -> str:
    root = tmp_path / "run"
    for step in steps:
        perturbed_copy(eval_model_dir, str(root / f"checkpoint-{step}"), scale=0.1 * step, seed=step)
    return str(root)


def lm_eval_files(tmp_path):
    folder = tmp_path / "lm_eval_tasks"
    folder.mkdir()
    write_task(folder, "rs_mc", MC_YAML, MC_DOCS)
    ours = folder / "ours.jsonl"  # the same questions as our own multiple-choice task
    ours.write_text("".join(json.dumps({"context": f"Question: {d['question']}\nAnswer:",
                                        "choices": d["choices"], "gold": d["gold"]}) + "\n"
                            for d in MC_DOCS))
    return str(folder), str(ours)


def test_watch_benchmarks_with_bands_and_lm_eval_tasks(tmp_path, client, eval_model_dir,
                                                       monkeypatch):
    pytest.importorskip("lm_eval")
    from rollserve.eval.tasks.lm_eval_task import load_lm_eval_tasks

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    root = make_run(tmp_path, eval_model_dir)
    data_dir = write_bench_data(tmp_path / "data")
    include, ours = lm_eval_files(tmp_path)
    tasks = load_tasks(f"gsm8k:n=4:temperature=1.0,mmlu,ours={ours}#acc", data_dir=data_dir)
    tasks += load_lm_eval_tasks("rs_mc", include)
    out = os.path.join(root, "eval")
    ctx = EvalContext(client=client, settings=EvalSettings(limit=3, max_new_tokens=6, batch_size=4))
    wandb = WandbSync(ResultsLog(out), project="test", run_name="bench", mode="offline")
    options = WatchOptions(checkpoint_dir=root, output_dir=out, poll_interval=0.2, once=True,
                           allow_shared_server=True)
    try:
        assert Watcher(ctx, tasks, options, wandb=wandb, progress=False).run() == 3
    finally:
        wandb.finish()

    log = ResultsLog(out)
    rows = standing_rows(log.read())
    assert {(r["checkpoint"], r["task"]) for r in rows} == {
        (f"checkpoint-{s}", t) for s in (1, 2, 3) for t in ("gsm8k", "mmlu", "ours", "lm_eval:rs_mc")}
    assert all(r["status"] == OK for r in rows), [r["error"] for r in rows]

    # pass@k with n = 4 samples per problem, each metric with its standard error,
    # reproduced from the per-sample records
    for row in (r for r in rows if r["task"] == "gsm8k"):
        m = row["metrics"]
        assert {"pass@1", "pass@2", "pass@4", "maj@4", "pass@4_stderr"} <= set(m)
        samples = log.read_samples(row["checkpoint"], "gsm8k")
        assert all(len(s["outputs"]) == 4 and len(s["correct"]) == 4 for s in samples)
        for k in (1, 2, 4):
            per_problem = [pass_at_k(4, sum(s["correct"]), k) for s in samples]
            assert m[f"pass@{k}"] == pytest.approx(sum(per_problem) / len(per_problem))
            assert m[f"pass@{k}_stderr"] == pytest.approx(stats.mean_stderr(per_problem))

    # bands: in the plot's data, around every point; in the CSV; in wandb; in the table
    panels = [p for p in plot.panels(log.read()) if p.task in ("mmlu", "ours")]
    assert panels and all(p.bands["acc"] for p in panels if "acc" in p.metrics)
    for panel in panels:
        for metric in panel.metrics:
            for (step, value, _), (band_step, low, high) in zip(panel.points[metric],
                                                                panel.bands[metric]):
                assert step == band_step and low <= value <= high and 0 <= low and high <= 1
    assert os.path.getsize(log.path("metrics.png")) > 0
    with open(log.path("results.csv")) as f:
        header = next(csv.reader(f))
    assert {"acc", "acc_stderr", "pass@4", "pass@4_stderr"} <= set(header)
    logged = history(newest_offline_run(out))
    assert any("mmlu/acc_ci95_low" in h and "mmlu/acc_ci95_high" in h for h in logged)
    console = Console(width=400, record=True)
    console.print(history_table(log.read()))
    assert "±" in console.export_text()

    # lm-eval's task: its loglikelihoods equal ours on each checkpoint (no answer cached
    # from another checkpoint), and they differ between checkpoints
    per_checkpoint = []
    for step in (1, 2, 3):
        theirs = log.read_samples(f"checkpoint-{step}", "lm_eval:rs_mc")
        mine = log.read_samples(f"checkpoint-{step}", "ours")
        assert len(theirs) == len(mine) == 3
        for a, b in zip(sorted(theirs, key=lambda s: s["id"]), mine):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=2e-4)
        per_checkpoint.append(mine[0]["loglikelihoods"])
        lm_row = next(r for r in rows if r["checkpoint"] == f"checkpoint-{step}"
                      and r["task"] == "lm_eval:rs_mc")
        our_row = next(r for r in rows if r["checkpoint"] == f"checkpoint-{step}" and r["task"] == "ours")
        assert lm_row["metrics"]["acc"] == pytest.approx(our_row["metrics"]["acc"])
        assert "acc_stderr" in lm_row["metrics"]
    assert per_checkpoint[0] != pytest.approx(per_checkpoint[2], abs=1e-3)


@pytest.fixture
def second_server(tmp_path, eval_model_dir):
    with open(tmp_path / "second.log", "w") as log:
        proc, url = spawn_server(["--model-path", eval_model_dir, *SERVER_ARGS], log_file=log)
        try:
            wait_until_healthy(url, proc, timeout=300)
            yield url
        finally:
            stop_process_tree(proc)


def test_two_servers_score_checkpoints_concurrently(tmp_path, client, eval_model_dir,
                                                    second_server):
    from rollserve.rollout.client import RolloutClient

    root = make_run(tmp_path, eval_model_dir, steps=(1, 2, 3, 4))
    data_dir = write_bench_data(tmp_path / "data")
    settings = EvalSettings(batch_size=4)
    with RolloutClient(second_server, progress=False, timeout=120) as other:
        tasks = load_tasks("mmlu", data_dir=data_dir)
        out = os.path.join(root, "eval")
        options = WatchOptions(checkpoint_dir=root, output_dir=out, poll_interval=0.2, once=True,
                               allow_shared_server=True)
        watcher = Watcher(EvalContext(client=client, settings=settings), tasks, options,
                          progress=False, more_contexts=[EvalContext(client=other, settings=settings)])
        assert watcher.run() == 4
        rows = standing_rows(ResultsLog(out).read())
        assert [r["checkpoint"] for r in rows] == [f"checkpoint-{s}" for s in (1, 2, 3, 4)]
        assert all(r["status"] == OK and r["weight_version"] == r["weight_version_set"] for r in rows)
        # both servers were used, and each checkpoint's score is the checkpoint's own:
        # scored again on one server, one after another, the loglikelihoods agree
        served = {client.get_model_info()["weight_version"], other.get_model_info()["weight_version"]}
        assert len(served) == 2
        log = ResultsLog(out)
        for step in (1, 4):
            client.update_weights_from_disk(os.path.join(root, f"checkpoint-{step}"),
                                            weight_version=f"check-{step}")
            [again] = run_tasks(EvalContext(client=client, settings=settings), tasks, progress=False)
            recorded = log.read_samples(f"checkpoint-{step}", "mmlu")
            for a, b in zip(again.samples, recorded):
                assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
