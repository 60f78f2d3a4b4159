"""GRPO-shaped rollout throughput: P prompts x n samples at temperature 1 through
rollserve.Engine, the way an RL trainer sends a step's rollouts (one concurrent request
per prompt with n samples), and beside it the same P*n samples as separate n=1 requests
with the radix cache off (what prefix sharing buys).

    python -m rollserve.bench.rollout --shape qwen3-0.6b --num-prompts 64 --n 16 \\
        --min-input-len 512 --max-input-len 1024 --output-len 1024 --ignore-eos
    python -m rollserve.bench.rollout --num-prompts 4 --n 4 --input-len 32 --output-len 32 \\
        --max-total-tokens 1024 --device cpu          # CPU smoke test on a small model

Input and output lengths are fixed (--input-len / --output-len) or drawn per prompt
uniformly from [--min-*-len, --max-*-len]. Without --ignore-eos the model's EOS ends a
sample; dummy weights rarely produce it, so --stop-every K adds random stop token ids
(about vocab/K of them) that end a sample after ~K tokens on near-uniform logits: output
lengths unknown to the scheduler, as with a real policy.

Reported per mode: output tok/s, time to the last sample (the straggler that holds the
training step), the tail (time from 90% of the prompts' groups done to the last), the
scheduler's retractions and the tokens they made it recompute, the prefix-cache hit
rate, peak running requests, and the best 1 s decode rate the run showed (a full
batch's rate, for comparison with the whole run's).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import List

from rollserve.bench.offline import (add_engine_arguments, device_name, engine_kwargs, git_commit,
                                     kernel_switches, now_iso, resolve_model, write_json)

# get_server_info counters this bench reads; a tree without them (an older commit) reports None
COUNTERS = ("num_retracted_reqs_total", "retracted_recomputed_tokens_total")
PEAKS = ("peak_running_reqs", "peak_gen_throughput")


def draw_lengths(args, rng: random.Random, fixed: int, lo: int, hi: int) -> List[int]:
    if lo and hi:
        return [rng.randint(lo, hi) for _ in range(args.num_prompts)]
    return [fixed] * args.num_prompts


def workload(args, vocab: int):
    """(prompts, sampling params of each prompt's samples)."""
    rng = random.Random(args.seed)
    in_lens = draw_lengths(args, rng, args.input_len, args.min_input_len, args.max_input_len)
    out_lens = draw_lengths(args, rng, args.output_len, args.min_output_len, args.max_output_len)
    prompts = [[rng.randrange(100, vocab - 1) for _ in range(n)] for n in in_lens]
    stop_ids = None
    if args.stop_every:
        stop_ids = rng.sample(range(100, vocab - 1), max(1, vocab // args.stop_every))
    params = []
    for n_out in out_lens:
        p = {"max_new_tokens": n_out, "temperature": args.temperature, "ignore_eos": args.ignore_eos}
        if stop_ids:
            p["stop_token_ids"] = stop_ids
        params.append(p)
    return prompts, params


async def _send_all(engine, prompts, params, n: int, grouped: bool):
    """One concurrent request per prompt; returns (seconds to each group's end, outputs)."""
    start = time.perf_counter()

    async def one(prompt, p):
        if grouped:
            out = await engine.async_generate(input_ids=prompt, sampling_params={**p, "n": n})
        else:  # n separate requests of one sample each
            out = await engine.async_generate(input_ids=[prompt] * n, sampling_params=[p] * n)
        out = out if isinstance(out, list) else [out]
        return time.perf_counter() - start, out

    return await asyncio.gather(*[one(pr, p) for pr, p in zip(prompts, params)])


def bench_engine_args(args) -> dict:
    kwargs = engine_kwargs(args)
    if args.schedule_conservativeness is not None:
        kwargs["schedule_conservativeness"] = args.schedule_conservativeness
    return kwargs


def run_mode(args, prompts, params, grouped: bool) -> dict:
    import rollserve

    kwargs = bench_engine_args(args)
    if not grouped:
        kwargs["disable_radix_cache"] = True
    with rollserve.Engine(model_path=args.model_path, **kwargs) as engine:
        warm = {"max_new_tokens": 4, "ignore_eos": True, "temperature": 1.0}
        engine.generate(input_ids=prompts[:2], sampling_params=warm)
        engine.flush_cache()
        before = engine.get_server_info()
        groups = asyncio.run(_send_all(engine, prompts, params, args.n, grouped))
        after = engine.get_server_info()
    return figures("grouped n=%d, radix cache" % args.n if grouped else
                   "separate n=1, no radix cache", groups, before, after)


def figures(mode: str, groups, before: dict, after: dict) -> dict:
    ends = sorted(t for t, _ in groups)
    samples = [o for _, outs in groups for o in outs]
    meta = [o["meta_info"] for o in samples]
    elapsed = ends[-1]
    out_tokens = sum(m["completion_tokens"] for m in meta)
    in_tokens = sum(m["prompt_tokens"] for m in meta)
    cached = sum(min(m["cached_tokens"], m["prompt_tokens"]) for m in meta)
    p90 = ends[max(0, -(-9 * len(ends) // 10) - 1)]  # when 90% of the groups were done
    row = {"mode": mode, "samples": len(samples), "seconds": round(elapsed, 3),
           "input_tokens": in_tokens, "output_tokens": out_tokens,
           "output_tok_s": round(out_tokens / elapsed, 2),
           "time_to_last_sample_s": round(elapsed, 3),
           "time_to_half_groups_s": round(ends[(len(ends) - 1) // 2], 3),
           "time_to_90pct_groups_s": round(p90, 3), "tail_s": round(elapsed - p90, 3),
           "prefix_cache_hit_rate": round(cached / in_tokens, 4) if in_tokens else 0.0,
           "mean_output_len": round(out_tokens / len(samples), 1)}
    for key in COUNTERS:
        row[key] = after[key] - before[key] if key in after and key in before else None
    for key in PEAKS:
        row[key] = after.get(key)
    recomputed = row["retracted_recomputed_tokens_total"]
    row["recomputed_fraction"] = None if recomputed is None else \
        round(recomputed / (in_tokens + out_tokens), 4)
    peak = row["peak_gen_throughput"]
    row["fraction_of_peak_decode"] = round(row["output_tok_s"] / peak, 3) if peak else None
    return row


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--shape", default=None, help="a config under rollserve/bench/configs, dummy weights")
    p.add_argument("--num-prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--min-input-len", type=int, default=0, help="with --max-input-len: uniform")
    p.add_argument("--max-input-len", type=int, default=0)
    p.add_argument("--output-len", type=int, default=128)
    p.add_argument("--min-output-len", type=int, default=0, help="with --max-output-len: uniform")
    p.add_argument("--max-output-len", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--ignore-eos", action="store_true", help="every sample runs to its max_new_tokens")
    p.add_argument("--stop-every", type=int, default=0,
                   help="random stop token ids ending a sample after ~this many tokens")
    p.add_argument("--skip-separate", action="store_true", help="only the grouped run")
    p.add_argument("--seed", type=int, default=0)
    add_engine_arguments(p)
    p.add_argument("--schedule-conservativeness", type=float, default=None)
    p.add_argument("--output-file", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    args.disable_radix_cache = False  # the separate-requests run turns it off itself
    prompts, params = workload(args, resolve_model(args))
    rows = [run_mode(args, prompts, params, grouped=True)]
    if not args.skip_separate:
        rows.append(run_mode(args, prompts, params, grouped=False))
    report = {
        "benchmark": "rollout", "date": now_iso(), "device": device_name(), "commit": git_commit(),
        "shape": args.shape, "num_prompts": args.num_prompts, "n": args.n,
        "mean_input_len": round(sum(map(len, prompts)) / len(prompts), 1),
        "max_new_tokens_mean": round(sum(q["max_new_tokens"] for q in params) / len(params), 1),
        "temperature": args.temperature, "ignore_eos": args.ignore_eos, "stop_every": args.stop_every,
        "engine_args": bench_engine_args(args), "switches": kernel_switches(), "results": rows,
    }
    if len(rows) == 2:
        report["grouped_over_separate"] = round(rows[0]["output_tok_s"] / rows[1]["output_tok_s"], 2)
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"\nrollout: {report['num_prompts']} prompts x {report['n']} samples, mean "
          f"{report['mean_input_len']} in, max_new_tokens {report['max_new_tokens_mean']}, "
          f"ignore_eos={report['ignore_eos']}, {report['shape'] or ''} {report['device']}, "
          f"{report['date']}, commit {report['commit']}")
    cols = [("mode", "mode", 30), ("out tok/s", "output_tok_s", 11), ("last s", "time_to_last_sample_s", 9),
            ("tail s", "tail_s", 8), ("retracted", "num_retracted_reqs_total", 10),
            ("recomputed", "retracted_recomputed_tokens_total", 11),
            ("cache hit", "prefix_cache_hit_rate", 10), ("peak run", "peak_running_reqs", 9),
            ("peak dec tok/s", "peak_gen_throughput", 15)]
    print("".join(f"{title:<{w}}" if i == 0 else f"{title:>{w}}" for i, (title, _, w) in enumerate(cols)))
    for r in report["results"]:
        print("".join(f"{str(r[key]):<{w}}" if i == 0 else f"{str(r[key]):>{w}}"
                      for i, (_, key, w) in enumerate(cols)))
    if "grouped_over_separate" in report:
        print(f"grouped / separate output tok/s: {report['grouped_over_separate']}x")


if __name__ == "__main__":
    main()
