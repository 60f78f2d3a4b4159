"""Compute kernels the models call: the attention kernels (used by the backends in
executor/attention/, with the rotary + KV store before them), RMSNorm, activations and
the linear layers at decode batch sizes.

Each op has a `*_torch` reference (plain PyTorch; the CPU path and the ground truth
the GPU kernels are tested against), a Triton kernel in a `*_triton.py` module (imported
only when a CUDA tensor asks for it), and one dispatch function the models call.
"""

from rollserve.kernels.activation import silu_and_mul
from rollserve.kernels.linear import linear
from rollserve.kernels.norm import rms_norm
from rollserve.kernels.rotary import RopeInputs

__all__ = ["linear", "rms_norm", "RopeInputs", "silu_and_mul"]
