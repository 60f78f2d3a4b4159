"""The scheduler's host time per step with many running requests (the CPU work that
overlap scheduling must hide behind the GPU's step), on a tiny random Llama so the
model's own time stays small and is measured apart.

    python -m rollserve.bench.scheduler_host --num-requests 1000 --steps 30
    python -m rollserve.bench.scheduler_host --profile        # top functions by own time

Each step is timed whole and split into: model forward (`runner.forward`; on a GPU
only the launch, the kernels run asynchronously), sampling (on the CPU this is the
argmax itself), the scheduler's bookkeeping (building the batch; processing results:
stop checks, outputs, cache inserts) and the rest (on the CPU mostly freeing and
first-touching the step's logits). Requests draw input and output lengths uniformly
from the given ranges and ignore EOS; timing starts after `--warmup-steps`.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import tempfile
import time
from collections import defaultdict

import torch

from rollserve.bench.offline import device_name, git_commit, now_iso, write_json

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  vocab_size=32000, bos_token_id=1, eos_token_id=2)


def tiny_model_dir() -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    from rollserve.bench.synthetic_model import save_synthetic_tokenizer

    path = tempfile.mkdtemp(prefix="rollserve-host-bench-")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(path)
    save_synthetic_tokenizer(path, TINY_LLAMA["vocab_size"])
    return path


def make_scheduler(path: str, args):
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.executor.model_runner import ModelRunner
    from rollserve.scheduler.overlap_scheduler import OverlapScheduler
    from rollserve.scheduler.scheduler import Scheduler
    from rollserve.core.tokenizer import eos_token_ids, load_tokenizer

    server_args = ServerArgs(model_path=path, device=args.device, dtype="float32",
                             max_total_tokens=args.num_requests * (args.max_len * 2 + 8),
                             max_running_requests=args.num_requests,
                             context_length=2 * args.max_len + 8)
    config = server_args.scheduler_config()
    runner = ModelRunner(config.executor)
    tokenizer = load_tokenizer(path)
    cls = Scheduler if args.no_overlap else OverlapScheduler
    return cls(config, runner, tokenizer, eos_token_ids(path, tokenizer))


def add_requests(scheduler, args) -> None:
    from rollserve.core.io import TokenizedGenerateReq
    from rollserve.core.sampling_params import SamplingParams

    rng = random.Random(0)
    for i in range(args.num_requests):
        params = SamplingParams(max_new_tokens=rng.randint(args.min_len, args.max_len),
                                temperature=0, ignore_eos=True)
        params.normalize_and_validate()
        prompt = [rng.randrange(10, TINY_LLAMA["vocab_size"]) for _ in range(
            rng.randint(args.min_len, args.max_len))]
        scheduler.add_request(TokenizedGenerateReq(rid=f"h{i}", input_ids=prompt,
                                                   sampling_params=params))


class PhaseTimer:
    """Wraps methods of an object so each call's wall time adds to a named phase."""

    def __init__(self):
        self.seconds = defaultdict(float)

    def wrap(self, obj, method: str, phase: str) -> None:
        original = getattr(obj, method)

        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                self.seconds[phase] += time.perf_counter() - start

        setattr(obj, method, timed)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--min-len", type=int, default=50)
    p.add_argument("--max-len", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=40)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-overlap", action="store_true", help="the plain scheduler")
    p.add_argument("--profile", action="store_true", help="print the top functions by own time")
    p.add_argument("--output-file", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    scheduler = make_scheduler(tiny_model_dir(), args)
    gc.collect()
    gc.freeze()  # as the scheduler process does after startup
    add_requests(scheduler, args)
    for _ in range(args.warmup_steps):
        scheduler.step()
    timer = PhaseTimer()
    timer.wrap(scheduler.runner, "forward", "forward")
    timer.wrap(scheduler, "_launch_sampling", "sampling")
    timer.wrap(scheduler, "_build_batch", "bookkeeping")
    timer.wrap(scheduler, "_process_result", "bookkeeping")
    running = []
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    for _ in range(args.steps):
        scheduler.step()
        running.append(len(scheduler.running))
    if profiler:
        profiler.disable()
    total = time.perf_counter() - start
    per_step = {phase: round(s / args.steps * 1e3, 2) for phase, s in timer.seconds.items()}
    per_step["rest"] = round((total - sum(timer.seconds.values())) / args.steps * 1e3, 2)
    mean_running = sum(running) / len(running)
    report = {"benchmark": "scheduler_host", "date": now_iso(), "device": device_name(),
              "commit": git_commit(), "scheduler": "plain" if args.no_overlap else "overlap",
              "mean_running_requests": round(mean_running, 1), "steps": args.steps,
              "step_ms": round(total / args.steps * 1e3, 2), "ms_per_step": per_step,
              "bookkeeping_us_per_request": round(per_step["bookkeeping"] * 1e3 / max(1, mean_running), 2)}
    print(json.dumps(report, indent=2))
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    if args.output_file:
        write_json(report, args.output_file)
    return report


if __name__ == "__main__":
    main()
