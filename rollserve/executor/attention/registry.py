"""The attention backends by name: the one place that maps --attention-backend to a class.

A new backend is one file with an AttentionBackend subclass and one entry here."""

from __future__ import annotations

from typing import Optional, Type

import torch

from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.attention.torch_native import TorchNativeBackend
from rollserve.kernels.dispatch import interpreting, triton_available


def _triton() -> Type[AttentionBackend]:
    from rollserve.executor.attention.triton import TritonBackend  # imports triton

    return TritonBackend


def _flashinfer() -> Type[AttentionBackend]:
    from rollserve.executor.attention.flashinfer import FlashInferBackend

    return FlashInferBackend


def _mla() -> Type[AttentionBackend]:
    from rollserve.executor.attention.mla import MLABackend

    return MLABackend


def _batch_invariant() -> Type[AttentionBackend]:
    from rollserve.executor.attention.batch_invariant import BatchInvariantBackend

    return BatchInvariantBackend


BACKENDS = {"torch_native": lambda: TorchNativeBackend, "triton": _triton, "flashinfer": _flashinfer,
            "mla": _mla, "batch_invariant": _batch_invariant}
ATTENTION_BACKENDS = tuple(BACKENDS)


def select_attention_backend(requested: Optional[str], device: torch.device, mla: bool = False,
                             deterministic: bool = False) -> str:
    """The backend a runner on `device` uses: triton by default on CUDA, torch_native elsewhere;
    mla whenever the model runs multi-head latent attention over a latent pool (`mla`);
    batch_invariant with --enable-deterministic-inference (the only one that is).

    Raises ValueError naming --attention-backend when the request cannot run here.
    """
    if deterministic:
        if mla:
            raise ValueError("enable_deterministic_inference: models with multi-head latent "
                             "attention need --disable-mla (the batch-invariant attention reads "
                             "per-head K/V)")
        if requested not in (None, "batch_invariant"):
            raise ValueError(f"attention_backend: {requested} is not batch-invariant; with "
                             "--enable-deterministic-inference leave it out (batch_invariant)")
        return "batch_invariant"
    if mla:
        return "mla"  # the one backend that reads the latent pool (--disable-mla to use others)
    if requested == "mla":
        raise ValueError("attention_backend: mla needs a model with multi-head latent attention "
                         "(DeepSeek-V2/V3) and no --disable-mla")
    on_cuda = torch.device(device).type == "cuda" or interpreting()
    if requested is None:
        return "triton" if on_cuda and triton_available() else "torch_native"
    if requested not in BACKENDS:
        raise ValueError(f"attention_backend: must be one of {ATTENTION_BACKENDS}, got {requested!r}")
    if requested == "triton" and not (on_cuda and triton_available()):
        raise ValueError("attention_backend: triton needs a CUDA device and the triton package")
    if requested == "flashinfer":
        from rollserve.executor.attention.flashinfer import flashinfer_importable

        if not flashinfer_importable():
            raise ValueError("attention_backend: flashinfer is not installed "
                             "(pip install flashinfer-python), or use triton, the default on CUDA")
        if torch.device(device).type != "cuda" or not triton_available():
            raise ValueError("attention_backend: flashinfer needs a CUDA device and the triton package")
    return requested


def create_attention_backend(name: str, device: torch.device, num_kv_heads: int) -> AttentionBackend:
    return BACKENDS[name]()(device, num_kv_heads)


def tree_mask_backend(backend: AttentionBackend) -> AttentionBackend:
    """The backend that runs a forward carrying tree masks (attention/tree_mask.py): the
    backend itself where it applies them (torch_native, triton, flashinfer, mla), else the
    torch reference over the same pool (one per backend, kept; batch_invariant)."""
    if getattr(backend, "supports_tree_mask", False):
        return backend
    fallback = getattr(backend, "tree_fallback", None)
    if fallback is None:
        fallback = backend.tree_fallback = TorchNativeBackend(backend.device, backend.num_kv_heads)
    return fallback
