"""Offline throughput: N random prompts through rollserve.Engine and through a
transformers baseline on the same model, in one run, side by side.

    python -m rollserve.bench.offline --num-prompts 32 --input-len 128 --output-len 64
    python -m rollserve.bench.offline --shape llama-3.2-1b --num-prompts 256 \\
        --input-len 512 --output-len 256 --hf-backend generate_batch
    python -m rollserve.bench.offline --shape llama-3.1-8b --dataset sharegpt-like \\
        --num-prompts 1000 --skip-transformers

Datasets (token ids drawn at random): `random`, every prompt input-len long and asking
for output-len tokens; `sharegpt-like`, input and output lengths each drawn from a
log-normal with median 200 (--input-median, --output-median) and sigma 0.7, clipped to
[4, 2048] (mean ~250, the shape of ShareGPT conversations' lengths); `uniform`, both uniform in [--min-len, --max-len] (the
nano-vllm / mini-sglang workload is 256 sequences, 100..1024). Every request ignores EOS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from datetime import datetime, timezone
from typing import List, Tuple

import torch

DATASETS = ("random", "sharegpt-like", "uniform")


def random_prompts(num: int, input_len: int, vocab: int, seed: int) -> List[List[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 1) for _ in range(input_len)] for _ in range(num)]


def workload(args, vocab: int) -> Tuple[List[List[int]], List[int]]:
    """(prompts, output length of each) for args.dataset."""
    rng = random.Random(args.seed)
    if args.dataset == "random":
        return random_prompts(args.num_prompts, args.input_len, vocab, args.seed), \
            [args.output_len] * args.num_prompts
    if args.dataset == "sharegpt-like":
        def draw(median: int) -> int:
            return min(2048, max(4, int(rng.lognormvariate(math.log(median), 0.7))))
        medians = (args.input_median, args.output_median)
    else:
        def draw(_) -> int:
            return rng.randint(args.min_len, args.max_len)
        medians = (None, None)
    lengths = [(draw(medians[0]), draw(medians[1])) for _ in range(args.num_prompts)]
    prompts = [[rng.randrange(100, vocab - 1) for _ in range(n_in)] for n_in, _ in lengths]
    return prompts, [n_out for _, n_out in lengths]


def engine_kwargs(args) -> dict:
    kwargs = {"dtype": args.dtype, "load_format": args.load_format}
    for name in ("max_total_tokens", "device", "context_length", "max_running_requests",
                 "cuda_graph_max_bs", "mem_fraction_static", "attention_backend"):
        if getattr(args, name) is not None:
            kwargs[name] = getattr(args, name)
    for flag in ("disable_cuda_graph", "disable_overlap_schedule", "enable_torch_compile",
                 "disable_radix_cache"):
        if getattr(args, flag):
            kwargs[flag] = True
    if getattr(args, "tp_size", 1) != 1:
        kwargs["tp_size"] = args.tp_size
    return kwargs


def run_engine(args, prompts: List[List[int]], output_lens: List[int]) -> dict:
    import rollserve

    with rollserve.Engine(model_path=args.model_path, **engine_kwargs(args)) as engine:
        warm = {"max_new_tokens": 4, "ignore_eos": True, "temperature": 0}
        engine.generate(input_ids=prompts[:2], sampling_params=warm)
        engine.flush_cache()
        params = [{"max_new_tokens": n, "ignore_eos": True, "temperature": args.temperature}
                  for n in output_lens]
        if args.profile_steps:  # the timed run pays the profiler's overhead during those steps
            engine.start_profile(output_dir=args.profile_dir, num_steps=args.profile_steps,
                                 start_step=args.profile_start_step, profile_prefix="offline-",
                                 with_stack=args.profile_with_stack)
        start = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        elapsed = time.perf_counter() - start
        if args.profile_steps:
            engine.stop_profile()  # the run may end before profile_steps steps
        model_path = engine.server_args.model_path
    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return _figures("rollserve", elapsed, sum(map(len, prompts)), out_tokens, model_path)


def _hf_model(args, model_path: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = {"auto": torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
             "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.load_format == "dummy":  # same architecture, random weights made on the device
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path), dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    return model.eval(), device


def run_transformers(args, prompts: List[List[int]], output_lens: List[int], model_path: str) -> dict:
    """`generate` in fixed batches of --hf-batch-size (each batch padded to one length)."""
    model, device = _hf_model(args, model_path)
    out_tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), args.hf_batch_size):
            chunk, lens = prompts[i:i + args.hf_batch_size], output_lens[i:i + args.hf_batch_size]
            width = max(map(len, chunk))
            batch = torch.tensor([[0] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(batch, attention_mask=mask, max_new_tokens=max(lens),
                                 min_new_tokens=max(lens), do_sample=False, pad_token_id=0)
            out_tokens += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    elapsed = time.perf_counter() - start
    return _figures(f"transformers generate (bs={args.hf_batch_size})", elapsed,
                    sum(map(len, prompts)), out_tokens, model_path)


def run_transformers_generate_batch(args, prompts: List[List[int]], output_lens: List[int],
                                    model_path: str) -> dict:
    """transformers' continuous batching (`generate_batch`), one max_new_tokens for all."""
    from transformers import GenerationConfig

    model, _ = _hf_model(args, model_path)
    config = GenerationConfig(max_new_tokens=max(output_lens), do_sample=False, pad_token_id=0,
                              eos_token_id=model.config.eos_token_id)
    model.generate_batch(inputs=prompts[:2], generation_config=GenerationConfig(
        max_new_tokens=4, do_sample=False, pad_token_id=0), progress_bar=False)
    start = time.perf_counter()
    outputs = model.generate_batch(inputs=prompts, generation_config=config, progress_bar=False)
    elapsed = time.perf_counter() - start
    out_tokens = sum(len(o.generated_tokens) for o in outputs.values())
    return _figures("transformers generate_batch", elapsed, sum(map(len, prompts)), out_tokens, model_path)


def _figures(name, elapsed, in_tokens, out_tokens, model_path) -> dict:
    return {"backend": name, "model_path": model_path, "seconds": round(elapsed, 3),
            "input_tokens": in_tokens, "output_tokens": out_tokens,
            "output_tok_s": round(out_tokens / elapsed, 2),
            "total_tok_s": round((in_tokens + out_tokens) / elapsed, 2)}


def write_json(report: dict, path: str) -> None:
    """The benchmark's figures as JSON at `path` (folders created)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)


def git_commit() -> str:
    """HEAD's short hash; ROLLSERVE_COMMIT when set (a copied tree without .git, e.g. the GPU machine)."""
    if os.environ.get("ROLLSERVE_COMMIT"):
        return os.environ["ROLLSERVE_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def kernel_switches() -> dict:
    """The kernel switches set for this run (ROLLSERVE_DISABLE_*, ROLLSERVE_GEMV_FUSION: A/B runs)."""
    return {k: v for k, v in sorted(os.environ.items())
            if k.startswith("ROLLSERVE_DISABLE_") or k == "ROLLSERVE_GEMV_FUSION"}


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The engine's flags a bench passes through (engine_kwargs reads them back)."""
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--load-format", default=None, help="default: dummy with --shape, else auto")
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-running-requests", type=int, default=None)
    p.add_argument("--mem-fraction-static", type=float, default=None)
    p.add_argument("--cuda-graph-max-bs", type=int, default=None)
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--disable-overlap-schedule", action="store_true")
    p.add_argument("--enable-torch-compile", action="store_true")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks (GPUs)")


def resolve_model(args) -> int:
    """Sets args.model_path (a --shape made on disk, dummy weights) and args.load_format;
    returns the model's vocabulary size."""
    from transformers import AutoConfig

    from rollserve.frontend.server_args import ServerArgs
    from rollserve.frontend.startup import resolve_model_path

    if args.shape:
        from rollserve.bench.synthetic_model import materialize

        args.model_path = materialize(args.shape, tempfile.mkdtemp(prefix="rollserve-shape-"))
    args.load_format = args.load_format or ("dummy" if args.shape else "auto")
    args.model_path = resolve_model_path(ServerArgs(model_path=args.model_path))
    return AutoConfig.from_pretrained(args.model_path).vocab_size


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--shape", default=None,
                   help="a config under rollserve/bench/configs, run with dummy weights")
    p.add_argument("--dataset", choices=DATASETS, default="random")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--input-median", type=int, default=200, help="sharegpt-like dataset")
    p.add_argument("--output-median", type=int, default=200, help="sharegpt-like dataset")
    p.add_argument("--min-len", type=int, default=100, help="uniform dataset")
    p.add_argument("--max-len", type=int, default=1024, help="uniform dataset")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    add_engine_arguments(p)
    p.add_argument("--disable-radix-cache", action="store_true")
    p.add_argument("--hf-backend", choices=("generate", "generate_batch"), default="generate")
    p.add_argument("--hf-batch-size", type=int, default=8)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--output-file", default=None, help="write the figures as JSON here")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="torch.profiler over this many engine steps (trace + op table)")
    p.add_argument("--profile-start-step", type=int, default=0, help="engine steps to skip first")
    p.add_argument("--profile-dir", default=None, help="default: $ROLLSERVE_TORCH_PROFILER_DIR or /tmp")
    p.add_argument("--profile-with-stack", action="store_true",
                   help="record Python stacks too (what the scheduler's host was doing)")
    args = p.parse_args(argv)
    vocab = resolve_model(args)
    prompts, output_lens = workload(args, vocab)
    rows = [run_engine(args, prompts, output_lens)]
    if not args.skip_transformers:
        baseline = run_transformers_generate_batch if args.hf_backend == "generate_batch" else run_transformers
        rows.append(baseline(args, prompts, output_lens, args.model_path))
    report = {
        "benchmark": "offline", "date": now_iso(), "device": device_name(), "commit": git_commit(),
        "shape": args.shape, "dataset": args.dataset, "num_prompts": args.num_prompts,
        "input_len": args.input_len, "output_len": args.output_len,
        "mean_input_len": round(sum(map(len, prompts)) / len(prompts), 1),
        "mean_output_len": round(sum(output_lens) / len(output_lens), 1),
        "engine_args": engine_kwargs(args), "switches": kernel_switches(), "results": rows,
    }
    if len(rows) == 2:
        report["ratio_output_tok_s"] = round(rows[0]["output_tok_s"] / rows[1]["output_tok_s"], 2)
        report["ratio_total_tok_s"] = round(rows[0]["total_tok_s"] / rows[1]["total_tok_s"], 2)
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"\noffline ({report['dataset']}): {report['num_prompts']} prompts, mean "
          f"{report['mean_input_len']} in -> {report['mean_output_len']} out, {report['shape'] or ''} "
          f"{report['device']}, {report['date']}")
    print(f"{'backend':<34}{'seconds':>10}{'output tok/s':>14}{'total tok/s':>14}")
    for r in report["results"]:
        print(f"{r['backend']:<34}{r['seconds']:>10.2f}{r['output_tok_s']:>14.1f}{r['total_tok_s']:>14.1f}")
    if "ratio_output_tok_s" in report:
        print(f"{'ratio rollserve / transformers':<34}{'':>10}{report['ratio_output_tok_s']:>14.2f}"
              f"{report['ratio_total_tok_s']:>14.2f}")


if __name__ == "__main__":
    main()
