"""Runs a function on N tensor-parallel ranks (one spawned process each, gloo on CPU) and
returns every rank's result: the multi-process half of the TP tests, bounded in time."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import tempfile
import time
import traceback
from typing import Any, Callable, List

RANK_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(fn: Callable, rank: int, size: int, port: int, args: tuple, out_dir: str) -> None:
    import torch

    from rollserve.executor.parallel_state import destroy_tensor_parallel, init_tensor_parallel

    torch.set_num_threads(1)  # N ranks share the test machine's few cores
    try:
        init_tensor_parallel(rank, size, f"tcp://127.0.0.1:{port}", "cpu", timeout_s=RANK_TIMEOUT_S)
        outcome = (True, fn(*args))
        destroy_tensor_parallel()
    except Exception:
        outcome = (False, traceback.format_exc())
    # a file, not a queue: results of a few MB arrive whole whatever the other ranks do
    torch.save(outcome, os.path.join(out_dir, f"rank{rank}.tmp"))
    os.replace(os.path.join(out_dir, f"rank{rank}.tmp"), os.path.join(out_dir, f"rank{rank}.pt"))


def run_on_ranks(fn: Callable, size: int, *args: Any, timeout_s: float = RANK_TIMEOUT_S) -> List[Any]:
    """[fn(*args) on rank 0, ..., on rank size-1]; fn must be importable (module level)."""
    import torch

    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tp-ranks-") as out_dir:
        procs = [ctx.Process(target=_rank_main, args=(fn, r, size, port, args, out_dir), daemon=True)
                 for r in range(size)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            for p in procs:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                    p.join(timeout=10)
        results = []
        for r, p in enumerate(procs):
            path = os.path.join(out_dir, f"rank{r}.pt")
            if not os.path.exists(path):
                raise AssertionError(f"rank {r} left no result (exit code {p.exitcode}; "
                                     f"timeout {timeout_s}s)")
            ok, value = torch.load(path, weights_only=False)
            if not ok:
                raise AssertionError(f"rank {r} failed:\n{value}")
            results.append(value)
    return results
