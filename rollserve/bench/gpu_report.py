"""The GPU suite's results as one markdown table, each figure beside its target.

    python -m rollserve.bench.gpu_report bench/results/2026-11-25-gpu
"""

from __future__ import annotations

import glob
import json
import os
import sys

SGLANG_8B_SHAREGPT = 16215  # output tok/s, Llama-3.1-8B bf16, 1000 ShareGPT prompts, H100 (published)
VLLM_8B_SHAREGPT = 12553
TARGET_FRACTION = {"llama-3.1-8b": 0.85, "llama-3.2-1b": 0.70}


def load(folder: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = json.load(f)
    return out


def backend_label(backend) -> str:
    """' (flashinfer)' for runs on another attention backend than the default triton."""
    return f" ({backend})" if backend not in (None, "triton") else ""


def one_batch_rows(name: str, report: dict):
    shape = report["shape"] + backend_label(report.get("attention_backend"))
    for r in report["results"]:
        target = TARGET_FRACTION.get(report["shape"]) if r["batch_size"] == 1 else None
        verdict = "" if target is None else (
            f"target >= {target:.0%} of roofline: {'met' if r['fraction_of_roofline'] >= target else 'missed'}")
        yield (f"one_batch {shape} bs={r['batch_size']} decode", f"{r['decode_tok_s']:.1f} tok/s",
               f"{r['fraction_of_roofline']:.1%} of {r['roofline_tok_s']:.0f} (graph replay "
               f"{r['graph_gpu_ms']} ms, step {r['decode_step_ms']} ms overlapped, "
               f"{r.get('decode_step_sync_ms')} ms synchronous) {verdict}")
        if r["batch_size"] == 1:
            yield (f"one_batch {shape} prefill {r['input_len']} tokens", f"{r['prefill_ms']:.1f} ms",
                   f"{r['prefill_tok_s']:.0f} tok/s")
    if "baseline" in report:
        yield (f"transformers generate {shape} bs=1", f"{report['baseline']['decode_tok_s']:.1f} tok/s", "")


def offline_rows(name: str, report: dict):
    ours = report["results"][0]
    label = f"offline {report['shape']} {report['dataset']} {report['num_prompts']} prompts " \
            f"({report['mean_input_len']:.0f} in / {report['mean_output_len']:.0f} out)" \
            + backend_label(report.get("engine_args", {}).get("attention_backend"))
    note = f"total {ours['total_tok_s']:.0f} tok/s"
    if "ratio_output_tok_s" in report:
        base = report["results"][1]
        note += (f"; {base['backend']}: {base['output_tok_s']:.0f} out tok/s; ratio "
                 f"{report['ratio_output_tok_s']:.1f}x (target 10x: "
                 f"{'met' if report['ratio_output_tok_s'] >= 10 else 'missed'})")
    if report.get("shape") == "llama-3.1-8b" and report["dataset"] == "sharegpt-like":
        note += (f"; published H100 ShareGPT: SGLang {SGLANG_8B_SHAREGPT}, vLLM {VLLM_8B_SHAREGPT} "
                 f"({ours['output_tok_s'] / SGLANG_8B_SHAREGPT:.0%} of SGLang)")
    yield label, f"{ours['output_tok_s']:.0f} out tok/s", note


def rollout_rows(name: str, report: dict):
    """issue #17's figures: output tok/s against the run's own full-batch decode rate."""
    for r in report["results"]:
        label = (f"rollout {report['shape']} {report['num_prompts']}x{report['n']} "
                 f"({report['mean_input_len']:.0f} in / {report['max_new_tokens_mean']:.0f} out) {r['mode']}")
        note = (f"last sample {r['time_to_last_sample_s']} s (tail {r['tail_s']} s); retracted "
                f"{r['num_retracted_reqs_total']}, recomputed {r['retracted_recomputed_tokens_total']} "
                f"tokens ({r['recomputed_fraction']}); cache hit {r['prefix_cache_hit_rate']}; peak "
                f"running {r['peak_running_reqs']}, peak decode {r['peak_gen_throughput']} tok/s "
                f"({r['fraction_of_peak_decode']} of it)")
        yield label, f"{r['output_tok_s']:.0f} out tok/s", note


def deterministic_rows(name: str, report: dict):
    """bench/deterministic.py: each mode's throughput, batch invariance and HF parity."""
    for r in report["results"]:
        par = r.get("parity_vs_transformers") or {}
        note = (f"probe bitwise equal alone / in batch: {r['probe_logprobs_bitwise_equal']}"
                + (f"; vs transformers {report['dtype']}: mean |dlogp| {par['mean_abs_diff']:.2e}, "
                   f"max {par['max_abs_diff']:.2e}, kl {par['kl']:.1e}" if par else ""))
        yield f"{name} {r['mode']}", f"{r['output_tok_s']:.0f} out tok/s", note
    yield (f"{name} cost", f"{report['cost_ratio_default_over_deterministic']}x",
           "default / deterministic throughput (SGLang reports ~1.34x with CUDA graphs)")


def vlm_rows(name: str, report: dict):
    """bench/vlm.py (issue #22): vision-tower images/s and image+text batch tok/s."""
    v = report["vision"]
    yield (f"{name} vision tower ({v['num_images']} images {v['image_size']}px)",
           f"{v['rollserve_images_per_s']:.1f} images/s",
           f"transformers {v['transformers_images_per_s']:.1f} images/s ({v['speedup']:.2f}x)")
    e = report["engine"]
    hf = e.get("transformers")
    yield (f"{name} engine batch {report['args']['batch_size']} "
           f"({report['args']['distinct_images']} distinct images)",
           f"{e['rollserve']['tok_per_s']:.0f} out tok/s",
           f"transformers generate {hf['tok_per_s']:.0f} tok/s ({e['speedup']:.2f}x)" if hf else "")


def speculative_rows(name: str, report: dict):
    """bench/speculative.py: NGRAM and oracle drafts (and, with --algorithm EAGLE, a dummy
    EAGLE head at forced acceptance) against plain decoding of the same run."""
    for r in report["results"]:
        for kind in ("ngram", "oracle", "eagle"):
            if kind not in r:
                continue
            s = r[kind]
            yield (f"{name} bs={r['batch_size']} {kind}", f"{s['speedup']}x",
                   f"{s['decode_tok_s']} vs {r['plain_tok_s']} tok/s plain; accept length "
                   f"{s['accept_length']} ({report['num_draft_tokens'] - 1} drafts); greedy "
                   f"equal to plain: {s['same_as_plain']}")


def moe_dispatch_rows(name: str, report: dict):
    """bench/moe_dispatch.py: one MoE block under DP attention, all-to-all beside all-gather."""
    for r in report["results"]:
        yield (f"{name} {r['ranks']} ranks T={r['tokens_per_rank']}", f"{r['speedup']}x",
               f"all-to-all {r['all_to_all_ms']} ms vs all-gather + all-reduce "
               f"{r['all_gather_ms']} ms per block; bytes sent per rank {r['all_to_all_bytes_sent']} "
               f"vs {r['all_gather_bytes_sent']}")


def main(argv=None) -> None:
    folder = (argv or sys.argv[1:])[0]
    reports = load(folder)
    env = reports.pop("env", {})
    print(f"device: {env.get('device')}, date: {env.get('date')}, commit: {env.get('commit')}, "
          f"torch {env.get('torch')}, triton {env.get('triton')}, transformers {env.get('transformers')}\n")
    print("| benchmark | result | notes |\n|---|---|---|")
    for name, report in reports.items():
        kind = report.get("benchmark") if isinstance(report, dict) else None  # a list: no row
        rows = one_batch_rows(name, report) if kind == "one_batch" else \
            offline_rows(name, report) if kind == "offline" else \
            rollout_rows(name, report) if kind == "rollout" else \
            deterministic_rows(name, report) if kind == "deterministic" else \
            vlm_rows(name, report) if kind == "vlm" else \
            speculative_rows(name, report) if kind == "speculative" else \
            moe_dispatch_rows(name, report) if kind == "moe_dispatch" else []
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
