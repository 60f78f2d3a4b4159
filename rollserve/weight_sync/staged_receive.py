"""The engine's end of a weight-update group: broadcasts are received beside generation.

update_weights_from_distributed used to wait for the trainer's broadcast between two
steps, so a trainer that called the endpoint and broadcast late (or never) stopped
generation for every other client for up to --dist-timeout. Now the control call only
starts the receive: the group's own thread posts the collectives into staging buffers
(allocated from the request's names, dtypes and shapes) while the scheduler keeps
stepping. Once the tensors are in on every tensor-parallel rank, the scheduler applies
them between two steps like any other update (weight_sync/service.py), so no result
mixes weights. Receives of one group run one at a time, in the order the calls came,
as the trainer broadcasts them.

Memory: a bucket's tensors are staged beside the weights they replace until they are
written, so an update holds its bucket's bytes twice for that long. A bucket is refused
(400, before anything is received) when the buckets staged on the group and this one
would take more than STAGING_FRACTION of the memory free on the staging device (the
GPU for NCCL, the host for gloo): the forward steps keep what they need, and the
trainer is told to send smaller buckets.

Timeouts: a receive that has not completed --dist-timeout seconds after it started
fails. The group is then out of step with the trainer (a late broadcast has no
partner), so it is marked broken: updates through it are refused, naming the cause,
until destroy_weights_update_group and a new init_weights_update_group.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Optional, Sequence

import torch

from rollserve.weight_sync import distributed

logger = logging.getLogger(__name__)
STAGING_FRACTION = 0.5  # of the memory free on the staging device; the rest stays for the steps


def free_bytes(device: torch.device) -> int:
    """Memory that can still be allocated on `device`: on CUDA what the driver has free plus
    what torch's allocator holds unused; on the host the kernel's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil  # not Linux

    return int(psutil.virtual_memory().available)


class GroupReceiver:
    """One joined group: its process group, and the thread that receives its broadcasts."""

    def __init__(self, name: str, group, backend: str, device: torch.device, timeout_s: float):
        self.name, self.group, self.backend = name, group, backend
        self.device = device  # where received tensors are staged: the GPU for NCCL, else the host
        self.timeout_s = timeout_s
        self.broken: Optional[str] = None  # why updates through the group are refused (all ranks)
        self.staged_bytes = 0  # of receives started and not yet written or dropped
        self._failed: Optional[str] = None  # the thread's own record: later receives fail at once
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"receive {name}")
        self._stream = None

    def room_problem(self, nbytes: int) -> Optional[str]:
        """Why staging `nbytes` more is refused, or None."""
        room = int(free_bytes(self.device) * STAGING_FRACTION)
        if self.staged_bytes + nbytes <= room:
            return None
        return (f"the bucket needs {_mib(nbytes)} of staging on {self.device} (received beside "
                f"the weights it replaces; {_mib(self.staged_bytes)} already staged), over "
                f"{STAGING_FRACTION:g} of the memory free there ({_mib(room)} allowed): send it "
                f"in smaller buckets")

    def receive(self, names: Sequence[str], dtypes: Sequence[torch.dtype],
                shapes: Sequence[Sequence[int]], load_format, nbytes: int) -> Future:
        """Start receiving one bucket after those asked for before; the future holds the
        (name, tensor) pairs, or the exception that ended the wait."""
        names, dtypes, shapes = list(names), list(dtypes), [tuple(s) for s in shapes]
        return self.run(lambda group, device, timeout_s: distributed.receive_named_tensors(
            group, names, dtypes, shapes, device, load_format, timeout_s=timeout_s), nbytes)

    def run(self, receive: Callable[[object, torch.device, float], object], nbytes: int) -> Future:
        """Run `receive(group, device, timeout_s)` in the group's thread after the receives
        asked for before (other layouts: vLLM's packed chunks, TRL's one tensor and barrier)."""
        self.staged_bytes += nbytes
        return self._thread.submit(self._receive, receive)

    def unstage(self, nbytes: int) -> None:
        """A staged bucket was written or dropped: its memory goes back."""
        self.staged_bytes = max(0, self.staged_bytes - nbytes)

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        if self.group is not None:
            distributed.destroy_process_group(self.group)

    def _receive(self, receive):
        if self._failed is not None:  # the trainer's collectives no longer pair with ours
            raise RuntimeError(f"an earlier receive on this group failed ({self._failed})")
        # gloo's own waits end at the group's timeout (--dist-timeout, as the join's); NCCL's
        # do not block the CPU, so their end is polled up to the same deadline
        timeout_s = self.timeout_s if self.backend == "nccl" else None
        try:
            if self.device.type != "cuda":
                return receive(self.group, self.device, timeout_s)
            # A stream of the receive's own: the collective's wait must not hold the forward
            # steps queued on the scheduler's stream behind a trainer that has not sent yet.
            torch.cuda.set_device(self.device)  # per thread; NCCL binds the current device
            if self._stream is None:
                self._stream = torch.cuda.Stream(self.device)
            with torch.cuda.stream(self._stream):
                received = receive(self.group, self.device, timeout_s)
            self._stream.synchronize()  # the tensors are whole before the scheduler reads them
            return received
        except Exception as e:
            self._failed = f"{type(e).__name__}: {e}"
            if self.backend == "nccl" and self.group is not None:  # free the posted kernel
                _abort(self.group)  # before NCCL's watchdog acts on it
            raise


def _abort(group) -> None:
    try:
        group.abort()
    except Exception:  # best effort: the group is reported broken either way
        logger.exception("aborting the weight-update group failed")


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"
