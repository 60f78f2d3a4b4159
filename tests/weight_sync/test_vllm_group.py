"""The engine's end of vLLM's own weight-transfer group (weight_sync/vllm_group.py), against
vLLM's real code where it can run.

vLLM is no dependency of rollserve. Tests that need its code take it from an installed
`vllm`, or from an unzipped wheel named by ROLLSERVE_VLLM_SOURCE (pure Python parts
import on a CPU machine):

    pip download --no-deps vllm==0.33.0 -d /tmp/vllmwhl
    unzip -q /tmp/vllmwhl/vllm-*.whl '*.py' -d /tmp/vllmsrc
    ROLLSERVE_VLLM_SOURCE=/tmp/vllmsrc pytest tests/weight_sync/test_vllm_group.py

vLLM's code runs only in child processes (the trainer's side), so this test process never
imports `vllm` and TRL's availability checks elsewhere in the suite are not disturbed.
Without vLLM's code those tests skip. The NCCL parts need CUDA (marker gpu); the whole push
needs two GPUs, since NCCL refuses two ranks of one communicator on one GPU.
"""

from __future__ import annotations

import base64
import ctypes
import os
import pickle
import socket
import subprocess
import sys
import textwrap
import threading
from datetime import timedelta

import pytest
import torch

from rollserve.weight_sync import vllm_group
from rollserve.weight_sync.vllm_group import UNIQUE_ID_KEY, fetch_unique_id, load_unique_id

TIMEOUT_S = 60


def free_port() -> int:
    """(rollserve.api.server has one, but it needs uvicorn, which a bare GPU machine lacks)"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vllm_pythonpath():
    """"" when vllm is installed, the unzipped wheel's folder, or None (skip)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return ""
    source = os.environ.get("ROLLSERVE_VLLM_SOURCE", "")
    if source and os.path.isfile(os.path.join(source, "vllm", "distributed", "utils.py")):
        return source
    return None


def run_vllm(code: str, *args, background: bool = False):
    """Run `code` in a child process that imports vLLM's own code (skip when there is none)."""
    path = vllm_pythonpath()
    if path is None:
        pytest.skip("vLLM's code is not here: install vllm or set ROLLSERVE_VLLM_SOURCE")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (path, os.getcwd()) if p))
    command = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if background:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f"vLLM's side failed:\n{done.stderr[-3000:]}")
    return done.stdout


VLLM_UNIQUE_ID = """
    from vllm.distributed.device_communicators.pynccl_wrapper import ncclUniqueId

    def unique_id(seed):
        uid = ncclUniqueId()
        for i in range(128):
            uid.internal[i] = (i * 37 + seed) % 256 - 128
        return uid
"""


def expected_bytes(seed: int) -> bytes:
    return bytes((i * 37 + seed + 128) % 256 for i in range(128))  # c_byte: signed


class Shell:
    """A pickle that runs a shell command when loaded by plain pickle."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class NotAnId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_byte * 128)]


# ---- the restricted unpickler ---------------------------------------------------------------
def test_unpickler_takes_vllms_own_unique_id_pickle():
    out = run_vllm(VLLM_UNIQUE_ID + """
    import base64, pickle
    print(base64.b64encode(pickle.dumps(unique_id(5))).decode())
    """)
    assert load_unique_id(base64.b64decode(out.strip().splitlines()[-1])) == expected_bytes(5)


def test_unpickler_refuses_everything_but_an_id(tmp_path):
    planted = tmp_path / "pwned"
    malicious = pickle.dumps(Shell(f"touch {planted}"))
    with pytest.raises(pickle.UnpicklingError, match="refused to load (posix|os|nt).system"):
        load_unique_id(malicious)
    assert not planted.exists()
    # ctypes' own unpickle path, with a class other than vLLM's ncclUniqueId
    with pytest.raises(pickle.UnpicklingError, match="NotAnId"):
        load_unique_id(pickle.dumps(NotAnId()))
    # 128 plain bytes, a dict, garbage: none is an id
    for value in (bytes(128), {"internal": list(range(128))}):
        with pytest.raises(pickle.UnpicklingError, match="not an ncclUniqueId"):
            load_unique_id(pickle.dumps(value))
    with pytest.raises(pickle.UnpicklingError):
        load_unique_id(b"\x80\x04garbage")
    with pytest.raises(pickle.UnpicklingError, match="no ncclUniqueId"):
        load_unique_id(pickle.dumps(bytes(100_000)))


# ---- the store handshake ------------------------------------------------------------------------
# The trainer's side as vLLM's trainer_init runs it up to NCCL: a store hosted as rank 0 that
# waits for every rank, then the pickled ncclUniqueId as rank 0's first broadcast_obj.
VLLM_TRAINER = VLLM_UNIQUE_ID + """
    import sys
    from vllm.distributed.utils import StatelessProcessGroup

    group = StatelessProcessGroup.create(host="127.0.0.1", port=int(sys.argv[1]), rank=0,
                                         world_size=3)
    group.broadcast_obj(unique_id(9), src=0)
    store = group.store
"""
# The same steps written from reading vLLM 0.33 (distributed/utils.py), for a machine without
# vLLM's code: vLLM's class is declared under its own module name so the pickle is the same.
PROTOCOL_TRAINER = """
    import ctypes, pickle, sys, types
    from datetime import timedelta
    from torch.distributed import TCPStore

    name = "vllm.distributed.device_communicators.pynccl_wrapper"
    parts = name.split(".")
    for i in range(1, len(parts) + 1):  # pickle imports the class's module, parents first
        sys.modules[".".join(parts[:i])] = types.ModuleType(".".join(parts[:i]))
    module = sys.modules[name]

    class ncclUniqueId(ctypes.Structure):
        _fields_ = [("internal", ctypes.c_byte * 128)]

    ncclUniqueId.__module__, module.ncclUniqueId = name, ncclUniqueId

    def unique_id(seed):
        uid = ncclUniqueId()
        for i in range(128):
            uid.internal[i] = (i * 37 + seed) % 256 - 128
        return uid

    store = TCPStore("127.0.0.1", int(sys.argv[1]), 3, is_master=True, use_libuv=False,
                     timeout=timedelta(seconds=60))  # returns once both engine ranks came
    store.set("broadcast_from/0/0", pickle.dumps(unique_id(9)))
"""
DONE = """
    store.get("test/engine_ranks_read")  # the store lives until the engine ranks have read
    print("trainer done", flush=True)
"""


@pytest.mark.parametrize("trainer", ["vllm", "protocol"])
def test_store_handshake_with_the_trainers_stateless_process_group(trainer):
    port = free_port()
    if trainer == "vllm":
        process = run_vllm(VLLM_TRAINER + DONE, port, background=True)
    else:
        process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PROTOCOL_TRAINER + DONE), str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        got = {}

        def engine_rank(i):
            got[i] = fetch_unique_id("127.0.0.1", port, 3, TIMEOUT_S)

        # two engine ranks (rank_offset 1 and 2): the trainer's store counts both in
        threads = [threading.Thread(target=engine_rank, args=(i,)) for i in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
        assert got == {1: expected_bytes(9), 2: expected_bytes(9)}
    finally:
        _tell_trainer(port)
        out, err = process.communicate(timeout=TIMEOUT_S)
    assert process.returncode == 0, err[-3000:]
    assert "trainer done" in out


def _tell_trainer(port: int) -> None:
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", port, is_master=False, wait_for_workers=False,
                     timeout=timedelta(seconds=TIMEOUT_S))
    store.set("test/engine_ranks_read", b"1")


def test_a_malicious_store_is_refused_before_anything_runs(tmp_path):
    """A store at the address init_info named serves a pickle that would run a command."""
    from torch.distributed import TCPStore

    planted = tmp_path / "pwned"
    port = free_port()
    store = TCPStore("127.0.0.1", port, 2, is_master=True, wait_for_workers=False,
                     timeout=timedelta(seconds=TIMEOUT_S))
    store.set(UNIQUE_ID_KEY, pickle.dumps(Shell(f"touch {planted}")))
    with pytest.raises(pickle.UnpicklingError, match="refused"):
        fetch_unique_id("127.0.0.1", port, 2, TIMEOUT_S)
    assert not planted.exists()


def test_join_refuses_a_cpu_engine_and_a_bad_rank():
    with pytest.raises(ValueError, match="NCCL"):
        vllm_group.join_vllm_group("127.0.0.1", free_port(), 1, 2, torch.device("cpu"), 5)
    with pytest.raises(ValueError, match="outside"):
        vllm_group.join_vllm_group("127.0.0.1", free_port(), 1, 2, torch.device("cpu"), 5,
                                   local_rank=1)


def test_a_pre_shared_unique_id_must_be_128_bytes_of_standard_base64():
    """vLLM's torch-free rendezvous: nccl_unique_id_b64 decodes to the raw id; URL-safe
    base64, another length or a non-string is refused naming the field."""
    import base64

    raw = bytes(range(128))
    assert vllm_group.decode_unique_id_b64(base64.b64encode(raw).decode()) == raw
    for bad in (base64.urlsafe_b64encode(raw).decode(), base64.b64encode(raw[:64]).decode(),
                "not base64!", "", 12):
        with pytest.raises(ValueError, match="nccl_unique_id_b64"):
            vllm_group.decode_unique_id_b64(bad)
