"""`eval watch` against a real server: perturbed checkpoints (metrics differ), a broken
one mid-sequence (recorded, the server keeps the last good weights), resume without
scoring twice, a kill mid-run, and a checkpoint dropped in while the watcher runs."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from rollserve.eval.report import ResultsLog
from rollserve.eval.runner import run_tasks
from rollserve.eval.tasks import load_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.wandb_sync import WandbSync
from rollserve.eval.watch import WatchOptions, Watcher
from tests.eval.conftest import WEIGHTS, broken_copy, perturbed_copy
from tests.eval.wandb_files import history, newest_offline_run

SETTINGS = EvalSettings(limit=3, max_new_tokens=4)


def recorded(output_dir: str) -> Counter:
    return Counter((r["checkpoint"], r["task"]) for r in ResultsLog(output_dir).read())


def test_watch_once_end_to_end(tmp_path, client, eval_model_dir):
    root = tmp_path / "run"
    perturbed_copy(eval_model_dir, str(root / "checkpoint-1"), scale=0.05, seed=1)
    broken_copy(eval_model_dir, str(root / "checkpoint-2"))
    perturbed_copy(eval_model_dir, str(root / "global_step_3"), scale=0.3, seed=3)
    out = str(root / "eval")
    tasks = load_tasks("facts,perplexity,arithmetic")
    ctx = EvalContext(client=client, settings=SETTINGS)
    at_failure = {}

    def after(checkpoint, rows):
        if checkpoint.name == "checkpoint-2":  # what the server serves right after the refusal
            at_failure["version"] = client.get_model_info()["weight_version"]
            ppl = run_tasks(ctx, load_tasks("perplexity"), progress=False)[0]
            at_failure["perplexity"] = ppl.metrics["perplexity"]

    wandb = WandbSync(ResultsLog(out), project="test", run_name="e2e", tags=["ci"], mode="offline")
    # the session's server has served other tests: shared on purpose
    options = WatchOptions(checkpoint_dir=str(root), output_dir=out, poll_interval=0.2,
                           once=True, baseline=eval_model_dir, allow_shared_server=True)
    watcher = Watcher(ctx, tasks, options, wandb=wandb, progress=False, on_checkpoint=after)
    try:
        scored = watcher.run()
    finally:
        wandb.finish()
    assert scored == 4
    rows = ResultsLog(out).read()
    counts = recorded(out)
    assert set(counts.values()) == {1} and len(counts) == 4 * 3  # each checkpoint x task once
    by = {(r["checkpoint"], r["task"]): r for r in rows}

    broken = [r for r in rows if r["checkpoint"] == "checkpoint-2"]
    assert {r["status"] for r in broken} == {"failed"}
    assert "down_proj" in broken[0]["error"] and "400" in broken[0]["error"]
    # the refused checkpoint left checkpoint-1's weights serving
    assert at_failure["version"] == watcher.guard.version_for(1) == "1@eval-" + watcher.guard.token
    assert at_failure["perplexity"] == pytest.approx(
        by[("checkpoint-1", "perplexity")]["metrics"]["perplexity"], rel=1e-6)

    ppl = [by[(c, "perplexity")]["metrics"]["perplexity"]
           for c in ("baseline", "checkpoint-1", "global_step_3")]
    assert len(set(ppl)) == 3, ppl  # the weights changed between checkpoints
    assert [by[(c, "facts")]["step"] for c in ("baseline", "checkpoint-1", "global_step_3")] == [0, 1, 3]
    assert by[("global_step_3", "facts")]["weight_version"] == watcher.guard.version_for(3)
    assert client.get_model_info()["weight_version"] == watcher.guard.version_for(3)

    with open(os.path.join(out, "results.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 12
    with open(os.path.join(out, "metrics.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"
    # wandb: one committed history row per results row, the baseline and the failures too
    logged = {h["eval/row"]: h for h in history(newest_offline_run(out)) if "eval/row" in h}
    assert set(logged) == {r["id"] for r in rows}
    for r in rows:
        h = logged[r["id"]]
        assert (h["checkpoint_step"], h["eval/checkpoint"], h["eval/status"]) == (
            r["step"], r["checkpoint"], r["status"])
        metrics = {k for k in h if "/" in k and not k.startswith(("eval/", f"{r['task']}/samples"))
                   and not k.endswith(("_ci95_low", "_ci95_high"))}  # the bands: test_watch_bench
        assert metrics == {f"{r['task']}/{m}" for m in r["metrics"]}  # none for failed rows
    assert glob.glob(os.path.join(out, "wandb", "offline-run-*", "files", "media", "table", "*", "*.json"))
    samples = os.path.join(out, "samples", "global_step_3", "facts.jsonl")
    with open(samples) as f:
        assert len(f.readlines()) == 3

    # a restart finds everything recorded and scores nothing
    again = Watcher(ctx, tasks, options, progress=False).run()
    assert again == 0 and recorded(out) == counts


def _start_watch(root, out, server_url, log_path):
    cmd = [sys.executable, "-m", "rollserve.cli", "eval", "watch", str(root), "--server",
           server_url, "--tasks", "perplexity,facts", "--limit", "3", "--poll-interval", "0.3",
           "--output-dir", out, "--wandb-mode", "disabled", "--no-progress",
           "--allow-shared-server"]
    return subprocess.Popen(cmd, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


def _wait_for(predicate, proc, log_path, timeout=90.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the watcher exited ({proc.returncode}):\n"
                                 f"{open(log_path).read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; watcher log:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.1)


def test_kill_resume_and_checkpoint_dropped_in(tmp_path, eval_server, eval_model_dir):
    root = tmp_path / "run"
    for step in (1, 2):
        perturbed_copy(eval_model_dir, str(root / f"checkpoint-{step}"), scale=0.1, seed=step)
    out = str(tmp_path / "out")
    log_path = str(tmp_path / "watch.log")

    first = _start_watch(root, out, eval_server, log_path)
    try:
        _wait_for(lambda: ("checkpoint-1", "perplexity") in recorded(out), first, log_path)
        first.send_signal(signal.SIGKILL)  # no clean-up: maybe mid-checkpoint
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    before = recorded(out)

    second = _start_watch(root, out, eval_server, log_path)
    try:
        everything = {(f"checkpoint-{s}", t) for s in (1, 2) for t in ("perplexity", "facts")}
        _wait_for(lambda: set(recorded(out)) >= everything, second, log_path)
        # a checkpoint being written: config first, the weights a few polls later
        late = tmp_path / "staging"
        perturbed_copy(eval_model_dir, str(late), scale=0.2, seed=7)
        os.makedirs(root / "checkpoint-3")
        for name in os.listdir(late):
            if name != WEIGHTS:
                os.rename(late / name, root / "checkpoint-3" / name)
        time.sleep(1.5)
        assert not any(c == "checkpoint-3" for c, _ in recorded(out))
        os.rename(late / WEIGHTS, root / "checkpoint-3" / WEIGHTS)
        _wait_for(lambda: ("checkpoint-3", "facts") in recorded(out), second, log_path)
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(timeout=20)
        except subprocess.TimeoutExpired:
            second.kill()
    counts = recorded(out)
    assert set(counts.values()) == {1}, counts  # nothing scored twice across the kill
    assert set(counts) == everything | {("checkpoint-3", "perplexity"), ("checkpoint-3", "facts")}
    assert all(counts[key] == 1 for key in before)
    rows = ResultsLog(out).read()
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    with open(os.path.join(out, "results.csv")) as f:
        assert len(f.read().splitlines()) == 1 + 6
