"""MoE benchmarks (GPU): the fused MoE kernel against a dense GEMM of the same FLOPs, and the
active-parameter roofline of decode on a MoE shape.

    python -m rollserve.bench.moe kernel --shape qwen3-30b-a3b --tokens 1 16 256 4096
    python -m rollserve.bench.moe roofline --shape deepseek-v2-lite --batch-size 1 8 64

A decode step reads the non-expert weights once and, per MoE layer, only the experts the
batch routes to: with B tokens choosing k of E experts uniformly, E * (1 - (1 - k/E)^B) of
them. The roofline is batch / (those bytes / memory bandwidth). Decode and offline engine
numbers on these shapes come from one_batch / offline with --shape (gpu_suite.sh `moe`).
"""

from __future__ import annotations

import argparse
import json
from typing import List

import torch

from rollserve.bench.synthetic_model import CONFIG_DIR

H100_BANDWIDTH = 3.35e12  # bytes/s, HBM3 (SXM)


def _model_on_meta(shape: str):
    from transformers import AutoConfig

    from rollserve.executor.models import get_model_class

    config = AutoConfig.from_pretrained(f"{CONFIG_DIR}/{shape}")
    with torch.device("meta"):
        return get_model_class(config)(config, torch.bfloat16)


def active_bytes(shape: str, batch: int, bytes_per_param: int = 2) -> dict:
    """Parameters a decode step of `batch` tokens reads (expected, uniform routing)."""
    from rollserve.executor.layers.moe import RoutedExperts

    model = _model_on_meta(shape)
    info = model.moe_info()
    experts = [m for m in model.modules() if isinstance(m, RoutedExperts)]
    expert_params = sum(m.w13_weight.numel() + m.w2_weight.numel() for m in experts)
    total = sum(p.numel() for p in model.parameters())
    per_expert = expert_params / max(1, len(experts) * info["num_experts"])
    e, k = info["num_experts"], info["top_k"]
    touched = e * (1 - (1 - k / e) ** batch) if e else 0
    active = total - expert_params + len(experts) * touched * per_expert
    return {"total_params": total, "active_params": active, "experts_read_per_layer": touched,
            "bytes_per_step": active * bytes_per_param}


def roofline(shape: str, batches: List[int], bandwidth: float) -> List[dict]:
    rows = []
    for batch in batches:
        sizes = active_bytes(shape, batch)
        rows.append({"shape": shape, "batch": batch, **sizes,
                     "roofline_tok_s": round(batch * bandwidth / sizes["bytes_per_step"], 1)})
    return rows


def _time(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters / 1e3


def kernel_bench(shape: str, token_counts: List[int]) -> List[dict]:
    from transformers import AutoConfig

    from rollserve.kernels.fused_moe_triton import fused_moe_triton
    from rollserve.kernels.moe import RoutingSpec, select_experts

    config = AutoConfig.from_pretrained(f"{CONFIG_DIR}/{shape}")
    e = getattr(config, "num_experts", None) or getattr(config, "n_routed_experts", None) \
        or config.num_local_experts
    k, h, i = config.num_experts_per_tok, config.hidden_size, config.moe_intermediate_size
    dev, dt = "cuda", torch.bfloat16
    w13 = torch.randn(e, 2 * i, h, device=dev, dtype=dt) * 0.02
    w2 = torch.randn(e, h, i, device=dev, dtype=dt) * 0.02
    rows = []
    for t in token_counts:
        x = torch.randn(t, h, device=dev, dtype=dt)
        weights, ids = select_experts(torch.randn(t, e, device=dev), RoutingSpec(top_k=k))
        flops = 2 * t * k * (2 * i * h + h * i)
        moe_s = _time(lambda: fused_moe_triton(x, w13, w2, weights, ids))
        # a dense GEMM pair of the same FLOPs: [t*k, h] x [h, 3i] then nothing else
        a = torch.randn(t * k, h, device=dev, dtype=dt)
        b = torch.randn(3 * i, h, device=dev, dtype=dt)
        dense_s = _time(lambda: torch.nn.functional.linear(a, b))
        rows.append({"shape": shape, "tokens": t, "moe_tflops": round(flops / moe_s / 1e12, 2),
                     "dense_tflops": round(flops / dense_s / 1e12, 2),
                     "moe_ms": round(moe_s * 1e3, 4), "dense_ms": round(dense_s * 1e3, 4)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("kernel", "roofline"))
    parser.add_argument("--shape", default="qwen3-30b-a3b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--bandwidth", type=float, default=H100_BANDWIDTH)
    parser.add_argument("--output-file")
    args = parser.parse_args()
    rows = (kernel_bench(args.shape, args.tokens) if args.what == "kernel"
            else roofline(args.shape, args.batch_size, args.bandwidth))
    print_rows(rows, args.output_file)


def print_rows(rows: List[dict], output_file: str = None) -> None:
    """One JSON line a row on stdout, and the list into `output_file` when given."""
    for row in rows:
        print(json.dumps(row))
    if output_file:
        with open(output_file, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
