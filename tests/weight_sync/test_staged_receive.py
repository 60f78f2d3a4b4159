"""update_weights_from_distributed receives beside generation (weight_sync/staged_receive.py,
issue #14): a trainer that calls it and broadcasts late does not hold other clients'
requests; one that never broadcasts gets a refusal after --dist-timeout and a group
marked broken; a bucket too large to stage is refused before anything is received."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import rollserve
from rollserve.api.server import free_port
from rollserve.weight_sync import distributed
from rollserve.weight_sync.staged_receive import STAGING_FRACTION, GroupReceiver, free_bytes
from tests.weight_sync.conftest import PROMPT_IDS, state_dict_of

DIST_TIMEOUT_S = 5
DELAY_S = 3.0  # the late trainer's delay between its HTTP call and its broadcast
GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
PROBE = "model.layers.0.self_attn.k_proj.weight"


@pytest.fixture(scope="module")
def engine(ckpts):
    with rollserve.Engine(ckpts["A"], max_total_tokens=4096, log_level="warning",
                          dist_timeout=DIST_TIMEOUT_S) as eng:
        yield eng


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


@contextlib.contextmanager
def trainer_group(engine, pool, name: str):
    """This process as the trainer (rank 0) of a gloo group the engine joins as rank 1."""
    port = free_port()
    joined = pool.submit(engine.init_weights_update_group, "127.0.0.1", port, 1, 2, name, "gloo")
    group = distributed.init_custom_process_group("gloo", "127.0.0.1", port, 2, 0, name)
    assert joined.result(timeout=120)["success"]
    try:
        yield group
    finally:
        answer = distributed.destroy_group_with_engine(
            group, lambda: engine.destroy_weights_update_group(name))
        assert answer["success"], answer


def bucket_args(named):
    return [n for n, _ in named], [str(t.dtype) for _, t in named], [list(t.shape) for _, t in named]


def greedy(engine):
    return engine.generate(input_ids=PROMPT_IDS, sampling_params=GREEDY)


def test_staging_room_is_a_share_of_the_free_memory():
    receiver = GroupReceiver("g", None, "gloo", torch.device("cpu"), 1.0)
    assert receiver.room_problem(1 << 20) is None
    huge = free_bytes(torch.device("cpu"))  # more than STAGING_FRACTION of what is free
    problem = receiver.room_problem(huge)
    assert "smaller buckets" in problem and f"over {STAGING_FRACTION:g}" in problem
    receiver.staged_bytes = huge  # buckets already staged count too
    assert receiver.room_problem(1) is not None


def test_generation_goes_on_while_the_trainer_delays_its_broadcast(engine, ckpts, pool):
    assert engine.update_weights_from_disk(ckpts["A"], weight_version="a")["success"]
    b = state_dict_of(ckpts["B"])
    before = engine.get_weights_by_name(PROBE, 6)
    with trainer_group(engine, pool, "late") as group:
        # refused at once, nothing posted, so the group stays in step with the trainer
        too_big = engine.update_weights_from_distributed([PROBE], ["float32"], [[1 << 24, 1 << 24]],
                                                         "late")
        assert not too_big["success"] and "smaller buckets" in too_big["message"]
        bad_shape = engine.update_weights_from_distributed([PROBE], ["float32"], [[-1]], "late")
        assert not bad_shape["success"] and "shapes[0]" in bad_shape["message"]

        named = list(b.items())
        started = time.monotonic()
        answer = pool.submit(engine.update_weights_from_distributed, *bucket_args(named), "late",
                             weight_version="b-late")
        outs = [greedy(engine) for _ in range(3)]  # other clients' requests complete meanwhile
        assert not answer.done(), "the update answered before the trainer broadcast"
        assert time.monotonic() - started < DELAY_S, "generation waited for the broadcast"
        assert all(len(o["output_ids"]) == GREEDY["max_new_tokens"] and
                   o["meta_info"]["weight_version"] == "a" for o in outs)
        assert engine.get_weights_by_name(PROBE, 6) == before  # nothing written yet
        time.sleep(max(0.0, started + DELAY_S - time.monotonic()))
        distributed.broadcast_named_tensors(group, named)
        result = answer.result(timeout=120)
    assert result["success"], result
    assert engine.get_weights_by_name(PROBE, 6) == pytest.approx(b[PROBE].flatten()[:6].tolist())
    assert engine.get_model_info()["weight_version"] == "b-late"
    assert greedy(engine)["meta_info"]["weight_version"] == "b-late"


def test_an_update_sent_during_a_receive_applies_after_it(engine, ckpts, pool):
    """Updates apply in the order they came: a disk update behind a pending receive waits
    for it (and new requests do not), so the last label is the last update's."""
    assert engine.update_weights_from_disk(ckpts["A"], weight_version="a")["success"]
    named = list(state_dict_of(ckpts["B"]).items())
    with trainer_group(engine, pool, "order") as group:
        received = pool.submit(engine.update_weights_from_distributed, *bucket_args(named),
                               "order", weight_version="b")
        time.sleep(0.3)
        from_disk = pool.submit(engine.update_weights_from_disk, ckpts["A"], weight_version="a2")
        assert len(greedy(engine)["output_ids"]) == GREEDY["max_new_tokens"]
        assert not received.done() and not from_disk.done()
        distributed.broadcast_named_tensors(group, named)
        assert received.result(timeout=120)["success"]
        assert from_disk.result(timeout=120)["success"]
    assert engine.get_model_info()["weight_version"] == "a2"
    a = state_dict_of(ckpts["A"])
    assert engine.get_weights_by_name(PROBE, 6) == pytest.approx(a[PROBE].flatten()[:6].tolist())


def test_a_trainer_that_never_broadcasts_gets_a_refusal_after_dist_timeout(engine, ckpts, pool):
    norm = state_dict_of(ckpts["A"])["model.norm.weight"]
    with trainer_group(engine, pool, "silent"):
        started = time.monotonic()
        answer = pool.submit(engine.update_weights_from_distributed, ["model.norm.weight"],
                             ["float32"], [list(norm.shape)], "silent")
        assert len(greedy(engine)["output_ids"]) == GREEDY["max_new_tokens"]
        result = answer.result(timeout=DIST_TIMEOUT_S + 60)
        waited = time.monotonic() - started
        assert not result["success"]
        assert "--dist-timeout" in result["message"] and "init_weights_update_group" in result["message"]
        assert DIST_TIMEOUT_S - 1 < waited < DIST_TIMEOUT_S + 30
        again = engine.update_weights_from_distributed(["model.norm.weight"], ["float32"],
                                                       [list(norm.shape)], "silent")
        assert not again["success"] and "broken" in again["message"]
    # destroyed on both sides (trainer_group); the engine serves as before
    assert len(greedy(engine)["output_ids"]) == GREEDY["max_new_tokens"]
