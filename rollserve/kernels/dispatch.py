"""Which implementation an op runs: the Triton kernel on CUDA tensors, else the torch reference.

Triton is imported only when a CUDA tensor first asks for it, so CPU installs never need it.
ROLLSERVE_DISABLE_TRITON=1 forces the torch references everywhere (for A/B checks). Under
TRITON_INTERPRET=1 the kernels also run on CPU tensors, in Triton's interpreter (slow; for
debugging the GPU path on a machine without one).

Programmatic dependent launch (PDL, Hopper and newer): the decode-path kernels are launched
with `launch_pdl`, so a kernel's programs start while the previous kernel drains. Each such
kernel calls `gdc_launch_dependents` at its start and `gdc_wait` before it reads anything an
earlier kernel of the forward wrote (or writes anything); before the wait it may only read
data no kernel of the forward writes (weights). Every PDL kernel waits, so completion stays
ordered through the chain. ROLLSERVE_DISABLE_PDL=1 turns it off (A/B runs).
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    if os.environ.get("ROLLSERVE_DISABLE_TRITON", "0") == "1":
        return False
    return importlib.util.find_spec("triton") is not None and (torch.cuda.is_available() or interpreting())


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: torch.Tensor) -> bool:
    """True when x lives on a CUDA device (or Triton interprets) and the kernels can run there."""
    return (x.is_cuda or interpreting()) and triton_available()


@functools.lru_cache(maxsize=None)
def _pdl_device(index: int) -> bool:
    if os.environ.get("ROLLSERVE_DISABLE_PDL", "0") == "1":
        return False
    has_gdc = importlib.util.find_spec("triton.language.extra.cuda") is not None
    return has_gdc and torch.cuda.get_device_capability(index) >= (9, 0)


def use_pdl(x: torch.Tensor) -> bool:
    """Whether kernels on x's device launch with PDL (USE_PDL and `pdl_launch(...)`). Not in the
    interpreter, and not while torch.compile traces (its kernel wrapper takes no launch_pdl)."""
    if not x.is_cuda or interpreting() or torch.compiler.is_compiling():
        return False
    return _pdl_device(x.device.index if x.device.index is not None else torch.cuda.current_device())


def pdl_launch(enabled: bool) -> dict:
    """The launch keywords for a kernel whose USE_PDL is `enabled`."""
    return {"launch_pdl": True} if enabled else {}


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def host_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copies a CPU tensor to `device` without making the host wait for queued GPU work:
    through pinned memory, non-blocking (a pageable copy would synchronize the stream)."""
    device = torch.device(device)
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: exact float32 products for float32 models (parity tests);
    half-precision inputs use the tensor cores either way."""
    return "ieee" if dtype == torch.float32 else "tf32"


class HostCopy:
    """A device tensor's copy to the host, queued now; wait() blocks only until the work
    queued before it is done (tolist() on a CUDA tensor would wait for the whole stream,
    including steps launched after it)."""

    def __init__(self, t: torch.Tensor):
        self.event = None
        if t.is_cuda:
            self.host = t.to("cpu", non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.host = t

    def wait(self) -> torch.Tensor:
        if self.event is not None:
            self.event.synchronize()
        return self.host
