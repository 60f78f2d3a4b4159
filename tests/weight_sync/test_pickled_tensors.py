"""The restricted unpickler for SGLang's pickled tensor payloads, without a server."""

from __future__ import annotations

import base64
import os
import pickle

import pytest
import torch

from rollserve.weight_sync.pickled_tensors import (FlattenedTensorMetadata, is_pickled_payload,
                                                   named_tensors_from_pickle, restricted_loads)
from rollserve.weight_sync.service import WeightSyncService
from rollserve.weight_sync.tensor_transport import PayloadError, serialize_named_tensors


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_payload_naming_anything_else_is_refused_before_it_runs():
    payload = base64.b64encode(pickle.dumps(RunsCode())).decode()
    with pytest.raises(PayloadError, match="system"):
        restricted_loads(payload)
    with pytest.raises(PayloadError, match="builtins.eval"):
        restricted_loads(pickle.dumps(eval))


def forking_dumps(obj) -> bytes:
    import io
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (tensor reductions)

    buffer = io.BytesIO()
    ForkingPickler(buffer).dump(obj)
    return buffer.getvalue()


def test_flattened_bucket_reconstruction_and_bounds():
    flat = torch.arange(10, dtype=torch.float32)
    meta = [FlattenedTensorMetadata("a", torch.Size([2, 3]), torch.float32, 0, 6, 6),
            FlattenedTensorMetadata("b", torch.Size([4]), torch.float16, 6, 10, 4)]
    named = named_tensors_from_pickle(forking_dumps({"flattened_tensor": flat, "metadata": meta}),
                                      "flattened_bucket")
    assert named[0][0] == "a" and named[0][1].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert named[1][1].dtype == torch.float16 and named[1][1].tolist() == [6, 7, 8, 9]
    meta[1].end_idx = 11
    with pytest.raises(PayloadError, match="do not fit"):
        named_tensors_from_pickle(forking_dumps({"flattened_tensor": flat, "metadata": meta}),
                                  "flattened_bucket")


def test_pickled_payloads_need_the_trusted_peer_flag():
    own = serialize_named_tensors([("w", torch.zeros(2))])
    assert not is_pickled_payload(own) and is_pickled_payload("gASVxxxx")
    assert WeightSyncService._read_bucket(own, None, allow_pickle=False)[0][0] == "w"
    with pytest.raises(PayloadError, match="--trust-local-pickled-tensors"):
        WeightSyncService._read_bucket(base64.b64encode(pickle.dumps([])).decode(), None, False)


def test_packed_chunks_are_cut_where_vllm_cuts_them():
    from rollserve.weight_sync.packed import chunk_plan

    dtypes = [torch.float32] * 4
    shapes = [[2], [2], [3], [1]]  # 8, 8, 12, 4 bytes
    # a chunk closes right after the tensor that takes it past the budget
    assert chunk_plan(dtypes, shapes, buffer_size_bytes=10) == [[0, 1], [2], [3]]
    assert chunk_plan(dtypes, shapes, buffer_size_bytes=100) == [[0, 1, 2, 3]]


def buckets_seen_by_rank(payloads):
    return [i for i, _ in WeightSyncService._buckets_of_this_rank(payloads)]


@pytest.mark.multiprocess
def test_under_tp_each_rank_reads_its_own_sglang_payload_and_all_of_rollserves():
    from tests.tp_ranks import run_on_ranks

    own = serialize_named_tensors([("w", torch.zeros(2))])
    assert buckets_seen_by_rank(["gASVa", "gASVb"]) == [0, 1]  # one rank: every bucket
    assert run_on_ranks(buckets_seen_by_rank, 2, ["gASVa", "gASVb"]) == [[0], [1]]
    assert run_on_ranks(buckets_seen_by_rank, 2, [own, own]) == [[0, 1], [0, 1]]
