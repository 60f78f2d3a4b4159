"""Where a decode step's GPU time goes: each kernel's time per step, from torch.profiler,
and the event timer the GPU benchmarks share.

Profiles replays of the decode CUDA graph captured for a batch size (the kernels inside
a graph are reported one by one) or, without graphs, eager forward steps.
"""

from __future__ import annotations

from typing import Callable, List

import torch


def cuda_time_ms(fn: Callable[[], None], repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of fn() between two CUDA events (warm-up calls untimed)."""
    import statistics

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _device_time_us(row) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(row, name):
            return float(getattr(row, name))
    return 0.0


def kernel_table(step: Callable[[], None], steps: int = 20) -> List[dict]:
    """Runs `step` `steps` times under the profiler; per kernel name: calls and us per step."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    rows = []
    for row in prof.key_averages():
        device_us = _device_time_us(row)
        if device_us <= 0 or row.cpu_time_total > 0:  # host-side ops report their kernels' time too
            continue
        rows.append({"kernel": row.key[:120], "calls_per_step": round(row.count / steps, 2),
                     "us_per_step": round(device_us / steps, 2)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def print_kernel_table(rows: List[dict], limit: int = 25) -> None:
    total = sum(r["us_per_step"] for r in rows)
    calls = sum(r["calls_per_step"] for r in rows)
    print(f"kernels per step: {calls:.0f} launches, {total:.1f} us of kernel time")
    for r in rows[:limit]:
        print(f"{r['us_per_step']:>10.1f} us {r['calls_per_step']:>6.1f}x  {r['kernel']}")
