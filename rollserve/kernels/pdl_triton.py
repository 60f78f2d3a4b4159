"""In-kernel halves of programmatic dependent launch (see kernels/dispatch.py): call
`launch_dependents` at a kernel's start and `wait_prior` before its first read of data an
earlier kernel wrote. Both compile to nothing when USE_PDL is off (CPU interpreter, A/B runs)."""

import triton
import triton.language as tl

try:  # triton >= 3.3; older ones never get USE_PDL (dispatch.use_pdl checks for the module)
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def launch_dependents(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_launch_dependents()


@triton.jit
def wait_prior(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_wait()
