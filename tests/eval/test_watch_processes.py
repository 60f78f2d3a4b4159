"""`eval watch` as a process, killed and restarted (#26 items 2, 3 and 7): a launched server
dies with a watcher killed by kill -9, a terminal Ctrl-C stops the watcher cleanly (its
summary table, no tracebacks, the server gone), and after a restart results.jsonl, the
wandb run (offline, read back from its files) and the plot agree row for row, every
checkpoint scored once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import psutil
import pytest

from rollserve.eval.plot import panels
from rollserve.eval.report import ResultsLog, standing_rows
from tests.eval.conftest import perturbed_copy
from tests.eval.wandb_files import history, newest_offline_run

TASKS = ("perplexity", "facts")
STEPS = (1, 2, 3)


def watch_cmd(root, out, *server):
    return [sys.executable, "-m", "rollserve.cli", "eval", "watch", str(root), *server,
            "--baseline", str(root / "base"), "--pattern", r"checkpoint-(\d+)",
            "--tasks", ",".join(TASKS), "--limit", "2", "--poll-interval", "0.3",
            "--output-dir", str(out), "--wandb-mode", "offline", "--wandb-project", "test",
            "--no-progress"]


def start(cmd, log_path):
    """In a session of its own, like a job a terminal started."""
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def rows_in(out):
    return ResultsLog(str(out)).read()


def wait_for(predicate, proc, log_path, timeout=480.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}:\n{open(log_path).read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.1)


def server_group(out):
    """The launched server's process group (server, scheduler, detokenizer, ...)."""
    with open(os.path.join(out, "server.json")) as f:
        pgid = json.load(f)["pgid"]
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


def all_gone(procs, timeout=45.0):
    """The pids of `procs` still running after `timeout` (zombies count as gone)."""
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    left = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                left.append((proc.pid, " ".join(proc.cmdline())[:120]))
        except psutil.NoSuchProcess:
            pass
    return left


pytestmark = pytest.mark.multiprocess  # watchers, launched servers and their engines


@pytest.mark.parametrize("stop", ["kill", "ctrl-c"])
def test_stopped_while_its_server_starts_leaves_nothing(tmp_path, eval_model_dir, stop):
    """Another moment: the launched server has been spawned but does not answer yet (the
    watcher waits in wait_until_healthy, before any row or wandb run exists)."""
    root, out = tmp_path / "run", tmp_path / "run" / "eval"
    perturbed_copy(eval_model_dir, str(root / "base"), scale=0.1, seed=0)
    log = str(tmp_path / "watch.log")
    watcher = start(watch_cmd(root, out, "--launch"), log)
    try:
        wait_for(lambda: os.path.exists(out / "server.json"), watcher, log, timeout=120)
        group = server_group(out)
        descendants = psutil.Process(watcher.pid).children(recursive=True)
        assert rows_in(out) == [] and group  # still starting
        if stop == "kill":
            watcher.send_signal(signal.SIGKILL)
            watcher.wait(timeout=10)
        else:
            os.killpg(watcher.pid, signal.SIGINT)
            assert watcher.wait(timeout=90) == 130
            printed = open(log).read()
            assert "Traceback" not in printed and "CancelledError" not in printed, printed[-3000:]
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert all_gone(group) == [], "the launched server outlived its watcher"
    assert all_gone(descendants) == []


def test_kill_ctrl_c_and_restart_agree_everywhere(tmp_path, eval_server, eval_model_dir):
    root, out = tmp_path / "run", tmp_path / "run" / "eval"
    perturbed_copy(eval_model_dir, str(root / "base"), scale=0.1, seed=0)
    for step in STEPS:
        perturbed_copy(eval_model_dir, str(root / f"checkpoint-{step}"), scale=0.05, seed=step)
    launch = ["--launch", "--server-args", "--max-total-tokens 8192"]

    # 1. kill -9 of the watcher: its launched server does not outlive it
    log1 = str(tmp_path / "watch1.log")
    first = start(watch_cmd(root, out, *launch), log1)
    try:
        wait_for(lambda: len(rows_in(out)) >= 3, first, log1)
        group = server_group(out)
        assert len(group) >= 3  # the server and its engine processes
        descendants = psutil.Process(first.pid).children(recursive=True)  # wandb's too
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    assert all_gone(group) == [], "the launched server outlived its watcher"
    assert all_gone(descendants) == [], "a process of the killed watcher is left"

    # 2. Ctrl-C at the terminal (SIGINT to the job's process group)
    log2 = str(tmp_path / "watch2.log")
    before = len(rows_in(out))
    second = start(watch_cmd(root, out, *launch), log2)
    try:
        wait_for(lambda: len(rows_in(out)) > before, second, log2)
        group = server_group(out)
        descendants = psutil.Process(second.pid).children(recursive=True)
        os.killpg(second.pid, signal.SIGINT)
        assert second.wait(timeout=90) == 130
    finally:
        if second.poll() is None:
            second.kill()
    assert all_gone(descendants) == []
    printed = open(log2).read()
    assert "eval of" in printed and "stopped (Ctrl-C)" in printed  # the summary table
    assert "Traceback" not in printed and "CancelledError" not in printed, printed[-3000:]
    assert all_gone(group) == []
    assert os.path.getsize(out / "server.log") > 0  # the server wrote there, not to the terminal

    # 3. a restart on another server finishes the rest
    log3 = str(tmp_path / "watch3.log")
    third = start(watch_cmd(root, out, "--server", eval_server, "--allow-shared-server",
                            "--once"), log3)
    assert third.wait(timeout=600) == 0, open(log3).read()[-3000:]

    rows = rows_in(out)
    expected = {(name, task) for name in ["baseline"] + [f"checkpoint-{s}" for s in STEPS]
                for task in TASKS}
    scored = Counter((r["checkpoint"], r["task"]) for r in rows if r["status"] == "ok")
    assert set(scored) == expected and set(scored.values()) == {1}  # each once
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]

    # wandb: the newest offline run holds every row of results.jsonl, each once
    logged = [h for h in history(newest_offline_run(str(out))) if "eval/row" in h]
    assert sorted(h["eval/row"] for h in logged) == sorted(r["id"] for r in rows)
    by_id = {r["id"]: r for r in rows}
    for h in logged:
        row = by_id[h["eval/row"]]
        assert h["checkpoint_step"] == row["step"] and h["eval/checkpoint"] == row["checkpoint"]
        mine = {k.split("/", 1)[1]: v for k, v in h.items()
                if k.startswith(row["task"] + "/") and "/samples" not in k
                and not k.endswith(("_ci95_low", "_ci95_high"))}  # the bands: test_watch_bench
        assert mine == row["metrics"]
        other = [k for k in h if k.split("/")[0] in TASKS and not k.startswith(row["task"] + "/")]
        assert other == []  # no other task's (or checkpoint's) metrics in the row
    assert len(os.listdir(out / "wandb" / "superseded")) == 2  # the killed and stopped runs

    # the plot draws exactly the standing rows
    drawn = sorted((p.task, m, s) for p in panels(rows) for m in p.metrics for s, _, _ in p.points[m])
    standing = sorted((r["task"], m, r["step"]) for r in standing_rows(rows) for m in r["metrics"]
                      if (r["task"], m) in {(p.task, x) for p in panels(rows) for x in p.metrics})
    assert drawn == standing
    assert os.path.getmtime(out / "metrics.png") >= os.path.getmtime(out / "results.jsonl")
