"""`rollserve eval run`: the summary table, per-sample JSONL, pass@k / maj@k over n
samples, a user JSONL task, and clear errors for bad flags."""

from __future__ import annotations

import json
import os

import pytest

from rollserve.cli import build_parser
from rollserve.eval.cli import run_eval


def eval_cli(*argv) -> int:
    return run_eval(build_parser().parse_args(["eval", *argv]))


def test_eval_run_table_samples_and_pass_at_k(tmp_path, eval_server, client, eval_model_dir, capsys):
    client.update_weights_from_disk(eval_model_dir, weight_version="run")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"prompt": "Say hi:", "answer": "hi"}) + "\n"
                  + json.dumps({"prompt": "Two:", "answer": "2"}) + "\n")
    out = tmp_path / "out"
    code = eval_cli("run", "--server", eval_server, "--tasks", f"arithmetic,facts,qa={qa}#exact_match",
                    "--limit", "3", "--n", "4", "--temperature", "1.0", "--max-new-tokens", "4",
                    "--output-dir", str(out), "--no-progress")
    assert code == 0
    printed = capsys.readouterr().out
    # the table may wrap a long model path's title cell over two lines (it did with pytest's
    # deeper tmp dirs): compare with runs of whitespace collapsed
    flat = " ".join(printed.split())
    for text in ("arithmetic", "pass@4", "maj@2", "acc_norm", "qa", "weight_version run"):
        assert text in flat
    with open(out / "samples.jsonl") as f:
        samples = [json.loads(line) for line in f]
    assert [s["task"] for s in samples] == ["arithmetic"] * 3 + ["facts"] * 3 + ["qa"] * 2
    assert all(len(s["outputs"]) == 4 for s in samples if s["task"] != "facts")
    metrics = json.loads((out / "summary.json").read_text())["results"]["arithmetic"]["metrics"]
    names = {"exact_match", "pass@1", "pass@2", "pass@4", "maj@1", "maj@2", "maj@4"}
    assert set(metrics) == names | {f"{m}_stderr" for m in names}  # each with its standard error
    assert "±" in printed
    assert metrics["pass@1"] == pytest.approx(metrics["exact_match"])
    assert metrics["pass@1"] <= metrics["pass@2"] <= metrics["pass@4"]


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "nope"], "unknown task 'nope'"),
    (["--limit", "0"], "limit"),
    ([], "give --server URL or --launch"),
    (["--server", "http://x", "--launch"], "give --server URL or --launch"),
])
def test_eval_run_bad_flags(argv, message, tmp_path, capsys):
    if argv and argv[0] in ("--tasks", "--limit"):
        argv = ["--server", "http://127.0.0.1:9", *argv]
    assert eval_cli("run", *argv, "--output-dir", str(tmp_path)) == 2
    assert message in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing written, no server contacted


def test_watch_with_no_server_answering_exits_with_a_message(tmp_path, capsys):
    """The shared-server check is the watcher's first call: a server that does not answer
    ends it with exit code 1 and the call named, not a traceback."""
    os.makedirs(tmp_path / "run" / "checkpoint-1")
    code = eval_cli("watch", str(tmp_path / "run"), "--server", "http://127.0.0.1:9", "--once",
                    "--wandb-mode", "disabled", "--no-progress")
    assert code == 1
    assert "/get_server_info: connection failed" in capsys.readouterr().err


def test_watch_launch_scores_checkpoints_and_stops_its_server(tmp_path, eval_model_dir):
    import psutil

    from rollserve.eval.report import ResultsLog
    from tests.eval.conftest import perturbed_copy

    root = tmp_path / "run"
    for step, scale in ((1, 0.05), (2, 0.3)):
        perturbed_copy(eval_model_dir, str(root / f"checkpoint-{step}"), scale=scale, seed=step)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    code = eval_cli("watch", str(root), "--launch", "--server-args", "--max-total-tokens 8192",
                    "--tasks", "perplexity", "--limit", "2", "--once", "--poll-interval", "0.2",
                    "--wandb-mode", "disabled", "--no-progress")
    assert code == 0
    rows = ResultsLog(str(root / "eval")).read()
    token = json.loads((root / "eval" / "server_claim.json").read_text())["token"]
    assert [(r["checkpoint"], r["status"], r["weight_version"]) for r in rows] == [
        ("checkpoint-1", "ok", f"1@eval-{token}"), ("checkpoint-2", "ok", f"2@eval-{token}")]
    assert rows[0]["metrics"]["perplexity"] != rows[1]["metrics"]["perplexity"]
    alive = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}
    assert alive <= children_before  # the launched server and its processes are gone
