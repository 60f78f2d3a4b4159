"""Finding checkpoint folders, deciding when they are complete, and the results record."""

import json
import os

import pytest
import torch

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.checkpoints import (DEFAULT_PATTERNS, Checkpoint, compile_patterns, discover,
                                        model_dir, select, step_of)
from rollserve.eval.completeness import Completeness
from rollserve.eval.plot import plot_metrics, redraw
from rollserve.eval.report import ResultsLog, latest_rows, result_row, write_csv
from rollserve.eval.tasks.base import TaskResult


def touch(path, content=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def write_weights(path, rows=4):
    """A real (tiny) safetensors file."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({"w": torch.ones(rows, 4)}, path)


def test_step_of_default_patterns():
    patterns = compile_patterns(DEFAULT_PATTERNS)
    assert step_of("checkpoint-500", patterns) == 500
    assert step_of("global_step120", patterns) == 120
    assert step_of("global_step_120", patterns) == 120
    assert step_of("step_7", patterns) == 7
    for name in ("checkpoint-500-tmp", "eval", "checkpoint-", "my_step_3", "step-3"):
        assert step_of(name, patterns) is None


def test_custom_pattern_and_named_group():
    assert step_of("ckpt.e3.s42", compile_patterns([r"ckpt\.e\d+\.s(?P<step>\d+)"])) == 42
    with pytest.raises(InvalidRequest, match="group"):
        compile_patterns([r"ckpt_\d+"])
    with pytest.raises(InvalidRequest, match="pattern"):
        compile_patterns([r"ckpt_(\d+"])


def test_discover_sorts_by_step_and_skips_files_and_output(tmp_path):
    for name in ("checkpoint-20", "checkpoint-3", "global_step_10", "unrelated", "step_5"):
        os.makedirs(tmp_path / name)
    touch(str(tmp_path / "checkpoint-99"))  # a file, not a folder
    os.makedirs(tmp_path / "eval")
    found = discover(str(tmp_path), compile_patterns(DEFAULT_PATTERNS + (r"eval()\d*",)),
                     exclude=[str(tmp_path / "eval")])
    assert [(c.step, c.name) for c in found] == [(3, "checkpoint-3"), (5, "step_5"),
                                                 (10, "global_step_10"), (20, "checkpoint-20")]
    assert discover(str(tmp_path / "missing"), compile_patterns(DEFAULT_PATTERNS)) == []


def test_every_counts_steps_not_folders():
    """OpenRLHF's global_stepN and global_stepN_hf are one checkpoint: --every 2 over steps
    5, 7, 9, 11 keeps 5 (both folders, the watcher scores the _hf one) and 9, newest first;
    steps already recorded and deleted since still count."""
    found = [Checkpoint(5, "global_step5", "/r/a"), Checkpoint(5, "global_step5_hf", "/r/b"),
             Checkpoint(7, "global_step7_hf", "/r/c"), Checkpoint(9, "global_step9_hf", "/r/d"),
             Checkpoint(11, "global_step11_hf", "/r/e")]
    chosen = select(found, order="newest", every=2)
    assert [c.name for c in chosen] == ["global_step9_hf", "global_step5_hf", "global_step5"]
    later = select(found[2:], every=2, recorded={(5, "global_step5_hf"), (5, "global_step5")})
    assert [c.step for c in later] == [9]


def test_completeness_needs_two_equal_looks(tmp_path):
    ckpt = Checkpoint(1, "checkpoint-1", str(tmp_path / "checkpoint-1"))
    os.makedirs(ckpt.path)
    check = Completeness()
    assert not check.check(ckpt)  # empty: never complete
    touch(os.path.join(ckpt.path, "config.json"), b"{}")
    assert not check.check(ckpt) and not check.check(ckpt)  # stable, but no weights yet
    write_weights(os.path.join(ckpt.path, "model.safetensors"), rows=2)
    assert not check.check(ckpt)  # first look with weights
    write_weights(os.path.join(ckpt.path, "model.safetensors"), rows=8)
    assert not check.check(ckpt)  # grew since the last look
    assert check.check(ckpt)      # unchanged: complete


def test_trainer_state_files_are_not_model_weights(tmp_path):
    """config.json beside a Trainer's training_args.bin and rng_state.pth, model file not
    there yet: not ready (never loaded and recorded as a broken checkpoint)."""
    ckpt = Checkpoint(3, "checkpoint-3", str(tmp_path))
    touch(str(tmp_path / "config.json"), b"{}")
    torch.save({"lr": 1e-5}, str(tmp_path / "training_args.bin"))
    torch.save({"cpu": torch.get_rng_state()}, str(tmp_path / "rng_state.pth"))
    check = Completeness()
    check.state(ckpt)
    assert check.state(ckpt).kind == "not ready"
    assert model_dir(str(tmp_path)) == str(tmp_path)
    torch.save({"w": torch.ones(2)}, str(tmp_path / "pytorch_model.bin"))
    assert [check.state(ckpt).kind for _ in range(2)] == ["changing", "complete"]


def test_completeness_waits_for_every_indexed_shard(tmp_path):
    ckpt = Checkpoint(2, "checkpoint-2", str(tmp_path))
    touch(str(tmp_path / "config.json"), b"{}")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors",
                            "b": "model-00002-of-00002.safetensors"}}
    touch(str(tmp_path / "model.safetensors.index.json"), json.dumps(index).encode())
    write_weights(str(tmp_path / "model-00001-of-00002.safetensors"))
    check = Completeness()
    assert not check.check(ckpt) and not check.check(ckpt)
    write_weights(str(tmp_path / "model-00002-of-00002.safetensors"))
    assert not check.check(ckpt) and check.check(ckpt)


def test_completeness_with_marker(tmp_path):
    ckpt = Checkpoint(1, "step_1", str(tmp_path))
    touch(str(tmp_path / "config.json"), b"{}")
    write_weights(str(tmp_path / "model.safetensors"))
    check = Completeness(marker="DONE")
    assert not check.check(ckpt) and not check.check(ckpt)
    touch(str(tmp_path / "DONE"), b"")
    assert check.check(ckpt)


def test_model_dir_finds_nested_hf_folder(tmp_path):
    top = tmp_path / "checkpoint-1"
    touch(str(top / "config.json"))
    touch(str(top / "model.safetensors"))
    assert model_dir(str(top)) == str(top)
    nested = tmp_path / "global_step_2"
    touch(str(nested / "actor" / "model_world_size_1_rank_0.pt"))
    touch(str(nested / "actor" / "huggingface" / "config.json"))
    touch(str(nested / "actor" / "huggingface" / "model.safetensors"))
    assert model_dir(str(nested)) == str(nested / "actor" / "huggingface")
    empty = tmp_path / "step_3"
    os.makedirs(empty)
    assert model_dir(str(empty)) == str(empty)


def _result(task, **metrics):
    return TaskResult(task=task, kind="x", metrics=metrics, samples=[{"id": "0"}], num_examples=1,
                      seconds=0.5)


def test_results_log_resume_keys_csv_and_png(tmp_path):
    log = ResultsLog(str(tmp_path))
    assert log.read() == [] and latest_rows(log.read()) == {}
    log.append([result_row(2, "checkpoint-2", "/c/2", "facts", result=_result("facts", acc=0.5)),
                result_row(1, "checkpoint-1", "/c/1", "facts", result=_result("facts", acc=0.25))])
    log.append([result_row(3, "checkpoint-3", "/c/3", "facts", error="HTTP 400: bad tensor")])
    with open(log.path("results.jsonl"), "a") as f:
        f.write('{"step": 4, "checkpoint": "checkpoint-4", "ta')  # killed mid-write
    assert set(latest_rows(log.read())) == {("checkpoint-1", "facts"), ("checkpoint-2", "facts"),
                                            ("checkpoint-3", "facts")}
    log.append([result_row(5, "checkpoint-5", "/c/5", "facts", result=_result("facts", acc=1.0))])
    assert [r["step"] for r in log.read()] == [2, 1, 3, 5]  # the cut line stays skipped
    redraw(log)
    with open(log.path("results.csv")) as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("step,checkpoint,task,status,num_examples,seconds,weight_version,"
                               "weight_version_set,acc,superseded,error")
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "5"]
    assert "failed" in lines[3] and "bad tensor" in lines[3]
    with open(log.path("metrics.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_skips_when_nothing_loaded(tmp_path):
    rows = [result_row(1, "c", "/c", "t", error="boom")]
    assert plot_metrics(rows, str(tmp_path / "m.png")) is None
    write_csv(rows, str(tmp_path / "r.csv"))
    assert "boom" in (tmp_path / "r.csv").read_text()


def test_result_row_is_json(tmp_path):
    row = result_row(7, "step_7", "/x", "arithmetic", result=_result("arithmetic", exact_match=0.0),
                     weight_version="7")
    assert json.loads(json.dumps(row))["metrics"] == {"exact_match": 0.0}
    assert row["status"] == "ok" and row["error"] is None


def test_once_does_not_wait_for_folders_that_never_become_loadable(tmp_path, capsys):
    import time

    from rollserve.eval.tasks import load_tasks
    from rollserve.eval.tasks.base import EvalContext
    from rollserve.eval.watch import WatchOptions, Watcher

    touch(str(tmp_path / "checkpoint-1" / "optimizer.pt"))  # e.g. sharded trainer state only
    touch(str(tmp_path / "checkpoint-2" / "config.json"))
    options = WatchOptions(str(tmp_path), str(tmp_path / "eval"), poll_interval=0.05, once=True)
    start = time.monotonic()
    watcher = Watcher(EvalContext(client=None), load_tasks("facts"), options, progress=False)
    assert watcher.run() == 0  # nothing loadable: never calls the server
    assert time.monotonic() - start < 5
    assert set(watcher.noted) == {"checkpoint-1", "checkpoint-2"}
    marked = WatchOptions(str(tmp_path), str(tmp_path / "eval"), marker="DONE", once=True)
    assert Watcher(EvalContext(client=None), load_tasks("facts"), marked, progress=False).run() == 0


def test_history_table_one_row_per_checkpoint():
    from rich.console import Console

    from rollserve.eval.console import history_table

    rows = [result_row(1, "checkpoint-1", "/c/1", "facts", result=_result("facts", acc=0.25)),
            result_row(1, "checkpoint-1", "/c/1", "ppl", result=_result("ppl", perplexity=1234.5)),
            result_row(2, "checkpoint-2", "/c/2", "facts", error="HTTP 400: bad"),
            result_row(2, "checkpoint-2", "/c/2", "ppl", error="HTTP 400: bad")]
    console = Console(record=True, width=200)
    console.print(history_table(rows, title="eval"))
    text = console.export_text()
    assert "0.2500" in text and "1234.5" in text
    assert "broken checkpoint (2 of 2)" in text and "errors: in results.jsonl" in text
    assert [line.split("│")[1].strip() for line in text.splitlines()
            if line.startswith("│")] == ["1", "2"]
