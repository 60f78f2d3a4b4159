"""What the kernel tests measure: ||out - ref|| / ||ref|| in float64, and no unwritten element."""

import torch


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert not torch.isnan(out).any(), "NaN in output (unwritten element?)"
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30)).item()
