"""The watcher against a real server (#26): a writer that pauses mid-file (item 1), the
layouts of verl and OpenRLHF (item 6), refusing a server that is not its own and
recording the weight_version each response reports (item 5), the backlog order and
progress per request (item 7).

The session's server has served other tests, so tests that do not test the refusal
pass allow_shared_server=True."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from rollserve.eval.attempts import looks_incomplete
from rollserve.eval.plot import build_figure
from rollserve.eval.report import ResultsLog, standing_rows
from rollserve.eval.server_guard import SharedServerError
from rollserve.eval.tasks import load_tasks
from rollserve.eval.tasks.base import EvalContext, EvalSettings
from rollserve.eval.tasks.perplexity import PerplexityTask
from rollserve.eval.watch import WatchOptions, Watcher
from rollserve.rollout.errors import RolloutError
from tests.eval.conftest import WEIGHTS, broken_copy, perturbed_copy

SETTINGS = EvalSettings(limit=2, max_new_tokens=2)


def watcher_for(client, root, out, tasks="perplexity", **options):
    options = {"poll_interval": 0.05, "allow_shared_server": True, **options}
    ctx = EvalContext(client=client, settings=SETTINGS)
    return Watcher(ctx, load_tasks(tasks), WatchOptions(str(root), str(out), **options),
                   progress=False)


def statuses(out):
    return [(r["checkpoint"], r["status"]) for r in ResultsLog(str(out)).read()]


def poll_until_quiet(watcher, rounds=8):
    for _ in range(rounds):
        watcher.poll()


def load_error(client, path):
    try:
        answer = client.update_weights_from_disk(path, weight_version="probe")
    except RolloutError as e:
        return str(e)
    return None if answer.get("success", True) else answer.get("message")


def test_writer_paused_mid_file_is_retried_not_broken(tmp_path, client, eval_model_dir):
    root, out = tmp_path / "run", tmp_path / "out"
    staged = perturbed_copy(eval_model_dir, str(tmp_path / "staged"), scale=0.05, seed=1)
    ckpt = root / "checkpoint-1"
    shutil.copytree(staged, ckpt, ignore=shutil.ignore_patterns(WEIGHTS))
    with open(os.path.join(staged, WEIGHTS), "rb") as f:
        data = f.read()
    with open(ckpt / WEIGHTS, "wb") as f:
        f.write(data[:len(data) // 2])  # the writer pauses here for several polls
    version = client.get_model_info()["weight_version"]
    watcher = watcher_for(client, root, out)
    poll_until_quiet(watcher)
    assert statuses(out) == [("checkpoint-1", "incomplete")]  # recorded once, not "failed"
    [row] = ResultsLog(str(out)).read()
    assert "bytes its header promises" in row["error"]
    assert client.get_model_info()["weight_version"] == version  # never loaded
    fig = build_figure(ResultsLog(str(out)).read())
    assert fig is None  # nothing scored yet, and nothing drawn as broken

    with open(ckpt / WEIGHTS, "ab") as f:
        f.write(data[len(data) // 2:])  # the writer resumes and finishes
    poll_until_quiet(watcher, rounds=3)
    assert statuses(out) == [("checkpoint-1", "incomplete"), ("checkpoint-1", "ok")]
    standing = standing_rows(ResultsLog(str(out)).read())
    assert [r["status"] for r in standing] == ["ok"]
    assert client.get_model_info()["weight_version"] == watcher.guard.version_for(1)


def test_load_errors_of_cut_files_read_as_incomplete(tmp_path, client, eval_model_dir):
    """The server's own words for a file cut short (in case a file changes between the
    watcher's check and the load) are told apart from a broken checkpoint's."""
    cut = perturbed_copy(eval_model_dir, str(tmp_path / "cut"), scale=0.01, seed=2)
    with open(os.path.join(cut, WEIGHTS), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(cut, WEIGHTS)) // 3)
    message = load_error(client, cut)
    assert message and looks_incomplete(message), message
    broken = load_error(client, broken_copy(eval_model_dir, str(tmp_path / "broken")))
    assert broken and not looks_incomplete(broken), broken


def test_verl_and_openrlhf_layouts(tmp_path, client, eval_model_dir):
    root, out = tmp_path / "run", tmp_path / "out"
    # verl's default checkpoint: FSDP shards, config and tokenizer without weights
    actor = root / "global_step_1" / "actor"
    shutil.copytree(eval_model_dir, actor / "huggingface", ignore=shutil.ignore_patterns(WEIGHTS))
    torch.save({"model.embed_tokens.weight": torch.zeros(2)}, str(actor / "model_world_size_1_rank_0.pt"))
    # OpenRLHF: DeepSpeed shards in global_step2, HF weights in global_step2_hf
    os.makedirs(root / "global_step2")
    torch.save({}, str(root / "global_step2" / "mp_rank_00_model_states.pt"))
    perturbed_copy(eval_model_dir, str(root / "global_step2_hf"), scale=0.05, seed=3)
    watcher = watcher_for(client, root, out)
    poll_until_quiet(watcher)
    assert statuses(out) == [("global_step_1", "not_scorable"), ("global_step2_hf", "ok")]
    [verl] = [r for r in ResultsLog(str(out)).read() if r["checkpoint"] == "global_step_1"]
    assert f"python -m verl.model_merger merge --backend fsdp --local_dir {actor}" in verl["error"]
    # the merge writes HF weights into actor/huggingface: the folder is scored
    shutil.copy(os.path.join(eval_model_dir, WEIGHTS), actor / "huggingface" / WEIGHTS)
    poll_until_quiet(watcher, rounds=3)
    standing = standing_rows(ResultsLog(str(out)).read())
    assert [(r["checkpoint"], r["status"]) for r in standing] == [("global_step_1", "ok"),
                                                                 ("global_step2_hf", "ok")]


class PushedMidTask(PerplexityTask):
    """A perplexity task during which another program loads weights into the server."""

    def __init__(self, rows, client, path):
        super().__init__("perplexity", rows)
        self.client, self.path = client, path

    def evaluate(self, ctx):
        self.client.update_weights_from_disk(self.path, weight_version="trainer-9")
        return super().evaluate(ctx)


def test_refuses_a_server_it_does_not_own_and_flags_mismatches(tmp_path, client, eval_model_dir):
    root, out = tmp_path / "run", tmp_path / "out"
    perturbed_copy(eval_model_dir, str(root / "checkpoint-1"), scale=0.05, seed=1)
    perturbed_copy(eval_model_dir, str(root / "checkpoint-2"), scale=0.05, seed=2)
    client.generate(["other traffic"], sampling_params={"max_new_tokens": 1})
    client.update_weights_from_disk(eval_model_dir, weight_version="trainer-7")
    refused = watcher_for(client, root, out, allow_shared_server=False, once=True)
    with pytest.raises(SharedServerError, match="'trainer-7'.*--allow-shared-server"):
        refused.run()
    assert ResultsLog(str(out)).read() == []
    assert client.get_model_info()["weight_version"] == "trainer-7"  # untouched

    # allowed: scores, and the server then carries this watcher's version
    shared = watcher_for(client, root, out, max_checkpoints=1)
    assert shared.run() == 1
    [row] = ResultsLog(str(out)).read()
    assert row["weight_version"] == row["weight_version_set"] == shared.guard.version_for(1)

    # a restarted watcher takes its own server back; another program pushes weights mid-task
    ctx = EvalContext(client=client, settings=SETTINGS)
    texts = load_tasks("perplexity")[0].rows
    own = Watcher(ctx, [PushedMidTask(texts, client, eval_model_dir)],
                  WatchOptions(str(root), str(out), poll_interval=0.05), progress=False)
    with pytest.raises(SharedServerError, match="trainer-9"):
        own.run()
    last = ResultsLog(str(out)).read()[-1]
    assert (last["checkpoint"], last["status"]) == ("checkpoint-2", "mismatch")
    assert last["weight_version"] == "trainer-9" != last["weight_version_set"]


def test_backlog_newest_first_every_second_and_progress_per_request(tmp_path, client,
                                                                    eval_model_dir):
    root, out = tmp_path / "run", tmp_path / "out"
    for step in (1, 2, 3, 4, 5):
        perturbed_copy(eval_model_dir, str(root / f"checkpoint-{step}"), scale=0.02, seed=step)
    watcher = watcher_for(client, root, out, order="newest", every=2, once=True)
    scored = []
    watcher.on_checkpoint = lambda checkpoint, rows: scored.append(checkpoint.step)
    watcher.run()
    assert scored == [5, 3, 1]

    advanced = []
    ctx = EvalContext(client=client, settings=EvalSettings(limit=5, max_new_tokens=2, batch_size=32),
                      advance=advanced.append)
    load_tasks("arithmetic")[0].evaluate(ctx)
    assert advanced == [1] * 5  # per request, not once per batch of 32
    assert set(ctx.weight_versions) == {client.get_model_info()["weight_version"]}
    assert sum(ctx.weight_versions.values()) == 5
