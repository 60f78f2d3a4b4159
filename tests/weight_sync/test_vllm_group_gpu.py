"""vLLM's weight-transfer group on GPUs (weight_sync/vllm_group.py, nccl_ctypes.py).

One GPU: rollserve's ctypes NCCL communicator on a one-rank communicator (the C
signatures, the warm-up all_reduce, a broadcast on the current stream, abort).
Two GPUs and vLLM's code in a child process (an installed vllm; an unzipped wheel
lacks the compiled parts vLLM's CUDA platform imports): vLLM's own trainer_init and
packed_nccl_broadcast_producer push to the engine's end, which receives through the
same receives (packed chunks, then one tensor at a time) and GroupReceiver as every push.
NCCL refuses two ranks of one communicator on one GPU, so the push needs two.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)

from rollserve.weight_sync import distributed  # noqa: E402
from rollserve.weight_sync.nccl_ctypes import NcclCommunicator, NcclLibrary  # noqa: E402
from rollserve.weight_sync.packed import receive_packed  # noqa: E402
from rollserve.weight_sync.staged_receive import GroupReceiver  # noqa: E402
from rollserve.weight_sync.vllm_group import join_vllm_group  # noqa: E402
from tests.weight_sync.test_vllm_group import free_port  # noqa: E402

TIMEOUT_S = 120
SHAPES = [(64, 32), (32,), (128, 64), (7, 3), (1000,)]
DTYPES = [torch.bfloat16, torch.float32, torch.float16, torch.float32, torch.bfloat16]
BUFFER = 8192  # small, so the packed push spans several chunks


def named_tensors(device) -> list:
    g = torch.Generator().manual_seed(0)
    return [(f"w{i}", torch.randn(shape, generator=g).to(dtype).to(device))
            for i, (shape, dtype) in enumerate(zip(SHAPES, DTYPES))]


def test_ctypes_communicator_on_one_rank():
    library = NcclLibrary.load()
    assert library.version() >= 21000
    device = torch.device("cuda", 0)
    communicator = NcclCommunicator(library.new_unique_id(), 0, 1, device, library)
    with torch.cuda.device(device):
        warm_up = torch.full((1,), 3.0, device=device)
        distributed.wait_all([communicator.all_reduce_sum(warm_up)], 30, "all_reduce")
        assert warm_up.item() == 3.0  # a sum over one rank
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):  # as GroupReceiver runs it: its own stream
            tensor = torch.arange(1000, dtype=torch.bfloat16, device=device)
            posted = communicator.post_broadcast(tensor, 0)
            distributed.wait_all([posted], 30)
        stream.synchronize()
        assert torch.equal(tensor.cpu(), torch.arange(1000, dtype=torch.bfloat16))
        with pytest.raises(ValueError, match="NCCL cannot broadcast"):
            communicator.post_broadcast(torch.zeros(2, dtype=torch.bool, device=device), 0)
    communicator.abort()
    with pytest.raises(RuntimeError, match="closed"):
        communicator.post_broadcast(tensor, 0)


VLLM_TRAINER = """
    import sys
    import torch
    from vllm.distributed.weight_transfer.nccl_common import trainer_init
    from vllm.distributed.weight_transfer.packed_tensor import packed_nccl_broadcast_producer

    sys.path.insert(0, sys.argv[2])
    from tests.weight_sync.test_vllm_group_gpu import BUFFER, named_tensors

    torch.cuda.set_device(0)
    group = trainer_init({"master_address": "127.0.0.1", "master_port": int(sys.argv[1]),
                          "world_size": 2})
    named = named_tensors("cuda:0")
    packed_nccl_broadcast_producer(iter(named), group=group, src=0,
                                   post_iter_func=lambda item: item[1], buffer_size_bytes=BUFFER)
    for _, tensor in named:  # vLLM's one-by-one layout
        group.broadcast(tensor, src=0)
    torch.cuda.synchronize()
    print("pushed", flush=True)
"""


def test_push_from_vllms_own_trainer_init():
    import importlib.util

    if torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per rank: the trainer's and the engine's")
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed here (its trainer side is the other rank)")
    port = free_port()
    trainer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(VLLM_TRAINER), str(port),
                                os.getcwd()], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    device = torch.device("cuda", 1)
    try:
        group = join_vllm_group("127.0.0.1", port, 1, 2, device, TIMEOUT_S)
        receiver = GroupReceiver("vllm_weight_transfer", group, "nccl", device, TIMEOUT_S)
        names = [n for n, _ in named_tensors("cpu")]
        packed = receiver.run(lambda g, d, t: receive_packed(g, names, DTYPES, SHAPES, d, 0,
                                                              BUFFER, t), 0)
        one_by_one = receiver.run(lambda g, d, t: distributed.receive_named_tensors(
            g, names, DTYPES, SHAPES, d, timeout_s=t), 0)
        for received in (packed.result(TIMEOUT_S), one_by_one.result(TIMEOUT_S)):
            for (name, got), (want_name, want) in zip(received, named_tensors("cpu")):
                assert name == want_name and got.device == device
                assert torch.equal(got.cpu(), want), name
        receiver.close()
    finally:
        try:
            out, err = trainer.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            trainer.kill()
            out, err = trainer.communicate()
    assert trainer.returncode == 0, err[-3000:]
    assert "pushed" in out
