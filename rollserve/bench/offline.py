"""Offline throughput: N random prompts through rollserve.Engine and through
transformers' `generate` on the same model, in one run, side by side.

    python -m rollserve.bench.offline --num-prompts 32 --input-len 128 --output-len 64
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from typing import List

import torch


def random_prompts(num: int, input_len: int, vocab: int, seed: int) -> List[List[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(100, vocab - 1) for _ in range(input_len)] for _ in range(num)]


def run_engine(args, prompts: List[List[int]]) -> dict:
    import rollserve

    engine_kwargs = {"dtype": args.dtype, "load_format": args.load_format}
    if args.max_total_tokens:
        engine_kwargs["max_total_tokens"] = args.max_total_tokens
    if args.device:
        engine_kwargs["device"] = args.device
    with rollserve.Engine(model_path=args.model_path, **engine_kwargs) as engine:
        params = {"max_new_tokens": args.output_len, "ignore_eos": True, "temperature": 0}
        engine.generate(input_ids=prompts[:2], sampling_params={**params, "max_new_tokens": 4})
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params)
        elapsed = time.perf_counter() - start
        model_path = engine.server_args.model_path
    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return _figures("rollserve", elapsed, len(prompts) * args.input_len, out_tokens, model_path)


def run_transformers(args, prompts: List[List[int]], model_path: str) -> dict:
    from transformers import AutoModelForCausalLM

    dtype = {"auto": torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
             "float32": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    out_tokens = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), args.hf_batch_size):
            batch = torch.tensor(prompts[i:i + args.hf_batch_size], device=device)
            out = model.generate(batch, attention_mask=torch.ones_like(batch),
                                 max_new_tokens=args.output_len, min_new_tokens=args.output_len,
                                 do_sample=False, pad_token_id=0)
            out_tokens += (out.shape[1] - batch.shape[1]) * batch.shape[0]
    elapsed = time.perf_counter() - start
    return _figures(f"transformers generate (bs={args.hf_batch_size})", elapsed,
                    len(prompts) * args.input_len, out_tokens, model_path)


def _figures(name, elapsed, in_tokens, out_tokens, model_path) -> dict:
    return {"backend": name, "model_path": model_path, "seconds": round(elapsed, 3),
            "input_tokens": in_tokens, "output_tokens": out_tokens,
            "output_tok_s": round(out_tokens / elapsed, 2),
            "total_tok_s": round((in_tokens + out_tokens) / elapsed, 2)}


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--hf-batch-size", type=int, default=8)
    p.add_argument("--skip-transformers", action="store_true")
    p.add_argument("--output-file", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    from transformers import AutoConfig

    from rollserve.engine.config import ServerArgs
    from rollserve.rollout.engine import resolve_model_path

    args.model_path = resolve_model_path(ServerArgs(model_path=args.model_path))
    vocab = AutoConfig.from_pretrained(args.model_path).vocab_size
    prompts = random_prompts(args.num_prompts, args.input_len, vocab, args.seed)
    rows = [run_engine(args, prompts)]
    if not args.skip_transformers:
        rows.append(run_transformers(args, prompts, args.model_path))
    report = {
        "benchmark": "offline", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "commit": _commit(), "num_prompts": args.num_prompts, "input_len": args.input_len,
        "output_len": args.output_len, "results": rows,
    }
    if len(rows) == 2:
        report["ratio_output_tok_s"] = round(rows[0]["output_tok_s"] / rows[1]["output_tok_s"], 2)
        report["ratio_total_tok_s"] = round(rows[0]["total_tok_s"] / rows[1]["total_tok_s"], 2)
    print_table(report)
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(report, f, indent=2)
    return report


def print_table(report: dict) -> None:
    print(f"\noffline: {report['num_prompts']} prompts x {report['input_len']} in -> "
          f"{report['output_len']} out, {report['device']}, {report['date']}")
    print(f"{'backend':<34}{'seconds':>10}{'output tok/s':>14}{'total tok/s':>14}")
    for r in report["results"]:
        print(f"{r['backend']:<34}{r['seconds']:>10.2f}{r['output_tok_s']:>14.1f}{r['total_tok_s']:>14.1f}")
    if "ratio_output_tok_s" in report:
        print(f"{'ratio rollserve / transformers':<34}{'':>10}{report['ratio_output_tok_s']:>14.2f}"
              f"{report['ratio_total_tok_s']:>14.2f}")


if __name__ == "__main__":
    main()
