"""Retry rules over the recorded rows (#26 item 1) and the backlog order (#26 item 7)."""

import datetime

import pytest

from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.attempts import MAX_ATTEMPTS, Attempts, looks_incomplete
from rollserve.eval.checkpoints import Checkpoint, select
from rollserve.eval.report import result_row

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


def row(status, files="f1", seconds=0, checkpoint="checkpoint-1", task="facts", error="x"):
    r = result_row(1, checkpoint, "/c", task, error=None if status == "ok" else error,
                   status=status, files=files)
    r["time"] = (T0 + datetime.timedelta(seconds=seconds)).isoformat(timespec="seconds")
    return r


def at(seconds):
    return T0 + datetime.timedelta(seconds=seconds)


def test_nothing_recorded_is_due_and_ok_is_final():
    attempts = Attempts([], poll_interval=10)
    assert attempts.due("checkpoint-1", "facts", "f1")
    attempts = Attempts([row("incomplete"), row("ok", seconds=5)], poll_interval=10)
    assert attempts.finished("checkpoint-1", "facts")
    assert not attempts.due("checkpoint-1", "facts", "f2", now=at(10_000))


def test_broken_checkpoint_is_retried_only_once_rewritten():
    attempts = Attempts([row("failed")], poll_interval=10)
    assert not attempts.due("checkpoint-1", "facts", "f1", now=at(10_000))
    assert attempts.due("checkpoint-1", "facts", "f2")  # the folder changed
    assert not attempts.finished("checkpoint-1", "facts")


def test_incomplete_write_is_retried_on_change_or_after_backoff():
    attempts = Attempts([row("incomplete", seconds=0)], poll_interval=10)
    assert attempts.due("checkpoint-1", "facts", "f2", now=at(1))  # changed: at once
    assert not attempts.due("checkpoint-1", "facts", "f1", now=at(19))  # 10 * 2^1
    assert attempts.due("checkpoint-1", "facts", "f1", now=at(20))
    tries = [row("incomplete", seconds=i) for i in range(MAX_ATTEMPTS)]
    attempts = Attempts(tries, poll_interval=10)
    assert not attempts.due("checkpoint-1", "facts", "f1", now=at(10 ** 6))  # gave up
    assert attempts.due("checkpoint-1", "facts", "f9", now=at(1))  # until it changes


def test_not_scorable_is_looked_at_again_when_the_folder_changes():
    attempts = Attempts([row("not_scorable")], poll_interval=10)
    assert not attempts.due("checkpoint-1", "facts", "f1", now=at(10 ** 6))
    assert attempts.due("checkpoint-1", "facts", "f2")


@pytest.mark.parametrize("message, incomplete", [
    ("HTTP 400: refused: model.safetensors: Error while deserializing header: "
     "MetadataIncompleteBuffer", True),
    ("HTTP 400: refused: pytorch_model.bin: PytorchStreamReader failed reading zip archive: "
     "failed finding central directory", True),
    ("HTTP 400: config.json: Expecting value: line 1 column 1 (char 0)", True),
    ("HTTP 400: refused, the old weights keep serving: tensor 'x' has shape (64, 127), "
     "LlamaForCausalLM expects (64, 128)", False),
    (None, False),
])
def test_which_load_errors_read_as_an_incomplete_write(message, incomplete):
    assert looks_incomplete(message) is incomplete


def test_backlog_order_and_every_kth():
    found = [Checkpoint(s, f"checkpoint-{s}", f"/r/checkpoint-{s}") for s in (10, 20, 30, 40, 50)]
    assert [c.step for c in select(found)] == [10, 20, 30, 40, 50]
    assert [c.step for c in select(found, order="newest")] == [50, 40, 30, 20, 10]
    assert [c.step for c in select(found, order="newest", every=2)] == [50, 30, 10]
    # the trainer deleted 10 and 20 after they were recorded: the kept steps stay the same
    recorded = {(10, "checkpoint-10"), (20, "checkpoint-20")}
    assert [c.step for c in select(found[2:], every=2, recorded=recorded)] == [30, 50]
    with pytest.raises(InvalidRequest, match="order"):
        select(found, order="random")
    with pytest.raises(InvalidRequest, match="every"):
        select(found, every=0)
