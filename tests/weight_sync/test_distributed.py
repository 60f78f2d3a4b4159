"""init_weights_update_group's arguments are checked before any rendezvous, and a join runs
beside the caller with a bounded wait (issue #14: nonsense or an absent trainer held the
scheduler for ten minutes)."""

import time

import torch

from rollserve.api.server import free_port
from rollserve.weight_sync import distributed

GOOD = dict(master_address="127.0.0.1", master_port=29500, rank_offset=1, world_size=2,
            group_name="g", backend="gloo")


def test_nonsense_arguments_are_named():
    assert distributed.check_group_args(**GOOD) is None
    for change, field in (({"master_port": 0}, "master_port"), ({"master_port": 70000}, "master_port"),
                          ({"master_port": True}, "master_port"), ({"world_size": -3}, "world_size"),
                          ({"world_size": 1}, "world_size"), ({"rank_offset": 0}, "rank_offset"),
                          ({"rank_offset": 2}, "rank_offset"), ({"master_address": ""}, "master_address"),
                          ({"master_address": "a b"}, "master_address"), ({"group_name": ""}, "group_name"),
                          ({"backend": "mpi"}, "backend")):
        problem = distributed.check_group_args(**{**GOOD, **change})
        assert problem and problem.startswith(field), (change, problem)


def test_a_trainer_that_never_comes_fails_within_the_timeout():
    port = free_port()  # nobody hosts the rendezvous there
    started = time.monotonic()
    answer = distributed.join_in_background(
        lambda: distributed.init_custom_process_group("gloo", "127.0.0.1", port, 2, 1, "g",
                                                      timeout_s=2.0),
        lambda group: {"success": True}, "group 'g'", 2.0)
    assert time.monotonic() - started < 0.5  # the caller is not held
    result = answer.result(timeout=30)
    assert result["success"] is False and "could not join" in result["message"]
    assert "--dist-timeout" in result["message"]
    assert time.monotonic() - started < 30


def test_bucket_shapes_and_bytes():
    assert distributed.check_shapes([[2, 3], (4,), []]) == [(2, 3), (4,), ()]
    for bad in ([-1], [2.0], [True], "3", None):
        try:
            distributed.check_shapes([[1], bad])
        except ValueError as e:
            assert str(e).startswith("shapes[1]"), e
        else:
            raise AssertionError(f"{bad!r} was taken as a shape")
    dtypes, shapes = [torch.float32, torch.bfloat16], [(3,), (2, 2)]
    assert distributed.bucket_bytes(dtypes, shapes) == 12 + 8
    # the flattened layout starts each tensor at a multiple of 64 bytes
    assert distributed.bucket_bytes(dtypes, shapes, distributed.FLATTENED_BUCKET) == 64 + 8
