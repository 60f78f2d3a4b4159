"""Decode-size linear layers: cuBLAS (F.linear) against the Triton GEMV for the Llama-3.2-1B
and Llama-3.1-8B shapes (configs under rollserve/bench/configs) at M = 1, 2, 4, 8, so the
crossover that sets kernels.linear.MAX_GEMV_M stays measured; at M = 1 also the norm (and
SiLU-and-mul) as separate kernels around the GEMV against fused into it.

    python -m rollserve.bench.gemv --out gemv.json [--models llama-3.2-1b] [--m 1 8]

Each figure is one CUDA-graph replay of CALLS back-to-back calls divided by CALLS (median of
several replays, device events); the calls rotate over enough weight copies (>= 4x the
50 MB L2) that every call streams its weight from memory. GB/s counts the weight plus the
activations read and the output written once.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
import json
import os

import torch
import torch.nn.functional as F

from rollserve.bench.kernel_profile import cuda_time_ms
from rollserve.bench.offline import device_name, git_commit, kernel_switches, now_iso, write_json

MODELS = ("llama-3.2-1b", "llama-3.1-8b", "qwen3-0.6b")
CALLS = 20
ROTATE_BYTES = 200 * 2**20
FUSIONS = {"qkv": "norm", "gate_up": "norm_silu"}  # what the decoder layer fuses into each GEMV


def linear_shapes(model: str) -> dict:
    """{name: (N, K)} of one layer's linears and the lm_head, plus the layer count."""
    path = os.path.join(os.path.dirname(__file__), "configs", model, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * head_dim, cfg["num_key_value_heads"] * head_dim
    shapes = {"qkv": (q + 2 * kv, hidden), "o": (hidden, q), "gate_up": (2 * inter, hidden),
              "down": (hidden, inter), "lm_head": (cfg["vocab_size"], hidden)}
    return {"shapes": shapes, "layers": cfg["num_hidden_layers"]}


def time_graph(fns) -> float:
    """Microseconds per call: a CUDA graph of the CALLS callables in `fns`, replayed."""
    for fn in fns[:2]:  # compile / pick configs outside the capture
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fns:
            fn()
    us_per_call = cuda_time_ms(graph.replay, repeats=15) * 1e3 / len(fns)
    del graph
    return us_per_call


def rel_err(out, ref) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def bench_case(n: int, k: int, m: int, dtype=torch.bfloat16, dev: str = "cuda",
               fused: str | None = None) -> dict:
    from rollserve.kernels.gemv_triton import gemv

    w_bytes = n * k * dtype.itemsize
    copies = max(2, min(32, -(-ROTATE_BYTES // w_bytes)))
    ws = [torch.randn(n, k, dtype=dtype, device=dev) * k ** -0.5 for _ in range(copies)]
    x = torch.randn(m, k, dtype=dtype, device=dev)
    calls = [ws[i % copies] for i in range(CALLS)]
    row = {"N": n, "K": k, "M": m, "weight_copies": copies}
    io_bytes = w_bytes + (m * k + m * n) * dtype.itemsize
    row["cublas_us"] = time_graph([lambda w=w: F.linear(x, w) for w in calls])
    row["gemv_us"] = time_graph([lambda w=w: gemv(x, w) for w in calls])
    row["gemv_err"] = rel_err(gemv(x, ws[0]), F.linear(x.float(), ws[0].float()))
    for key in ("cublas", "gemv"):
        row[f"{key}_gbps"] = io_bytes / (row[f"{key}_us"] * 1e-6) / 1e9
    if fused is not None and m == 1:
        row.update(time_fusion(x, calls, fused))
    del ws
    return row


def time_fusion(x: torch.Tensor, calls: list, kind: str) -> dict:
    """The layer's norm (+ residual add) and, for gate_up, the SiLU-and-mul: as separate kernels
    around the GEMV ('unfused') and inside it ('fused'), per call."""
    from rollserve.kernels.activation import silu_and_mul
    from rollserve.kernels.gemv_triton import NormPrologue, gemv
    from rollserve.kernels.norm import rms_norm

    k = x.shape[-1]
    norm_w, residual = torch.rand(k, dtype=x.dtype, device=x.device) + 0.5, torch.randn_like(x)
    silu = kind == "norm_silu"

    def unfused(w):
        normed, _ = rms_norm(x, norm_w, 1e-5, residual)
        y = gemv(normed, w)
        return silu_and_mul(y) if silu else y

    def fused(w):
        return gemv(x, w, norm=NormPrologue(norm_w, 1e-5, residual), silu_mul=silu)[0]

    out = {"fusion": kind, "unfused_us": time_graph([lambda w=w: unfused(w) for w in calls]),
           "fused_us": time_graph([lambda w=w: fused(w) for w in calls])}
    out["fused_err"] = rel_err(fused(calls[0]), unfused(calls[0]))
    return out


def sweep_configs(k: int) -> list:
    """Candidate GEMV configs for one-row inputs of width k: 8-64 weight elements per thread."""
    from rollserve.kernels.gemv_triton import GemvConfig

    out = []
    for block_n in (1, 2, 4, 8, 16):
        for block_k in (256, 512, 1024, 2048):
            for num_warps in (4, 8):
                per_thread = block_n * block_k // (32 * num_warps)
                if block_k > max(256, k) or not 16 <= per_thread <= 64:
                    continue
                out += [GemvConfig(block_n, block_k, num_warps, stages) for stages in (2, 4)]
    return out


def sweep_case(n: int, k: int, fused: str | None, dtype=torch.bfloat16, dev: str = "cuda") -> dict:
    """M = 1: every sweep config of the plain GEMV (and of the fused one, for qkv / gate_up),
    against the heuristic's pick."""
    from rollserve.kernels.gemv_triton import NormPrologue, gemv, pick_config

    silu = fused == "norm_silu"
    w_bytes = n * k * dtype.itemsize
    copies = max(2, min(32, -(-ROTATE_BYTES // w_bytes)))
    ws = [torch.randn(n, k, dtype=dtype, device=dev) * k ** -0.5 for _ in range(copies)]
    calls = [ws[i % copies] for i in range(CALLS)]
    x, residual = torch.randn(1, k, dtype=dtype, device=dev), torch.randn(1, k, dtype=dtype, device=dev)
    norm = NormPrologue(torch.rand(k, dtype=dtype, device=dev) + 0.5, 1e-5, residual)
    variants = {"plain": lambda w, cfg: gemv(x, w, config=cfg)}
    if fused:
        variants[fused] = lambda w, cfg: gemv(x, w, config=cfg, norm=norm, silu_mul=silu)
    out = {}
    for name, fn in variants.items():
        n_out = n // 2 if name == "norm_silu" else n
        default = pick_config(1, n_out, k, silu_mul=name == "norm_silu", norm=name != "plain")
        timings = []
        for cfg in [default] + sweep_configs(k):
            try:
                us = time_graph([lambda w=w, cfg=cfg: fn(w, cfg) for w in calls])
            except Exception as e:  # e.g. out of registers / shared memory
                timings.append({"config": asdict(cfg), "error": str(e)[:200]})
                continue
            timings.append({"config": asdict(cfg), "us": us})
        ok = [t for t in timings if "us" in t]
        best = min(ok, key=lambda t: t["us"])
        out[name] = {"default": timings[0], "best": best, "gbps_best": w_bytes / best["us"] / 1e3,
                     "all": timings}
    del ws
    return out


def run_sweep(models: list, linears: list) -> dict:
    result = {}
    for name in models:
        shapes = linear_shapes(name)["shapes"]
        for linear in [name for name in linears if name != "lm_head"]:  # lm_head streams at ~4 TB/s
            n, k = shapes[linear]
            case = sweep_case(n, k, FUSIONS.get(linear))
            result[f"{name}/{linear}"] = case
            for variant, r in case.items():
                d, b = r["default"], r["best"]
                print(f"sweep {name:13} {linear:8} {variant:9} default {d.get('us', float('nan')):7.1f} us "
                      f"{d['config']} | best {b['us']:7.1f} us {b['config']} ({r['gbps_best']:.0f} GB/s)")
    return result


def step_estimate(rows: list, model: dict) -> dict:
    """Per M: one decode step's linear time (layers x per-layer + lm_head), all through cuBLAS
    against all through the GEMV (the norm / SiLU kernels before them are the same on both)."""
    out = {}
    for m in sorted({r["M"] for r in rows}):
        by_name = {r["linear"]: r for r in rows if r["M"] == m}
        layer = [by_name[n] for n in ("qkv", "o", "gate_up", "down") if n in by_name]
        head = [by_name["lm_head"]] if "lm_head" in by_name else []
        out[m] = {f"{key}_path_us": model["layers"] * sum(r[f"{key}_us"] for r in layer)
                  + sum(r[f"{key}_us"] for r in head) for key in ("cublas", "gemv")}
    return out


def print_table(rows: list) -> None:
    print(f"{'model':14} {'linear':8} {'M':>2} {'N':>6} {'K':>6} | {'cuBLAS us':>9} {'GB/s':>5} | "
          f"{'gemv us':>8} {'GB/s':>5}")
    for r in rows:
        print(f"{r['model']:14} {r['linear']:8} {r['M']:2d} {r['N']:6d} {r['K']:6d} | "
              f"{r['cublas_us']:9.1f} {r['cublas_gbps']:5.0f} | {r['gemv_us']:8.1f} "
              f"{r['gemv_gbps']:5.0f}" + (f" | {r['fusion']}: separate kernels {r['unfused_us']:.1f} us,"
                                        f" fused {r['fused_us']:.1f} us" if "fusion" in r else ""))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--m", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--linears", nargs="+", default=["qkv", "o", "gate_up", "down", "lm_head"])
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    p.add_argument("--sweep", action="store_true",
                   help="M = 1: time every candidate config per linear (plain and fused GEMV)")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gemv bench: needs a CUDA device")
    if any(not 1 <= m <= 8 for m in args.m):
        raise SystemExit("--m: each value must be in 1..8")
    rows, steps = [], {}
    for name in args.models:
        model = linear_shapes(name)
        model_rows = []
        for linear in args.linears:
            n, k = model["shapes"][linear]
            for m in args.m:
                row = bench_case(n, k, m, fused=FUSIONS.get(linear))
                row.update(model=name, linear=linear)
                model_rows.append(row)
        rows += model_rows
        steps[name] = step_estimate(model_rows, model)
    print_table(rows)
    for name, per_m in steps.items():
        for m, s in per_m.items():
            print(f"{name} M={m}: linears per decode step {s['cublas_path_us']:.0f} us (cuBLAS) "
                  f"-> {s['gemv_path_us']:.0f} us (GEMV)")
    report = {"bench": "gemv", "device": device_name(), "date": now_iso(), "commit": git_commit(),
              "torch": torch.__version__, "calls_per_graph": CALLS, "dtype": "bfloat16",
              "switches": kernel_switches(), "rows": rows, "decode_step_linears": steps}
    if args.sweep:
        report["sweep"] = run_sweep(args.models, args.linears)
    if args.out:
        write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
