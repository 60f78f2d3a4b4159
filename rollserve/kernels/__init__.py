"""Compute kernels the models call: attention, RMSNorm, rotary embedding, activations.

Each op has a `*_torch` reference (plain PyTorch; the CPU path and the ground truth
the GPU kernels are tested against), a Triton kernel in `<op>_triton.py` (imported only
when a CUDA tensor asks for it), and one dispatch function the models call.
"""

from rollserve.kernels.activation import silu_and_mul
from rollserve.kernels.attention import attention
from rollserve.kernels.norm import rms_norm
from rollserve.kernels.rotary import apply_rotary

__all__ = ["attention", "rms_norm", "apply_rotary", "silu_and_mul"]
