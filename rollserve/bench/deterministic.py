"""The cost and the effect of --enable-deterministic-inference, against the default mode,
in one run on one device:

    python -m rollserve.bench.deterministic                      # embedded SmolLM2-135M
    python -m rollserve.bench.deterministic --model-path DIR --num-prompts 64 --output-len 64
    python -m rollserve.bench.deterministic --shape qwen3-0.6b     # seeded random weights

For each mode: offline throughput over N random prompts (sampled at --temperature, a seed
per request), then batch invariance (a probe prompt alone, then in the batch of all N: are
its tokens and logprobs bitwise the same?), then, with real weights, trainer parity: the
engine's logprobs of the batch against a transformers forward in the same dtype (bf16 on
CUDA by default), through rollserve.rollout.parity. SGLang reports its deterministic mode
at about 34% slower than its default with CUDA graphs; this prints rollserve's ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import List

import torch

from rollserve.bench.offline import device_name, git_commit, now_iso, random_prompts, write_json
from rollserve.rollout.parity import parity_report, trainer_logprobs

MODES = {"default": False, "deterministic": True}


def run_mode(args, deterministic: bool, prompts: List[List[int]], probe: List[int]) -> dict:
    import rollserve

    kwargs = {"dtype": args.dtype, "max_total_tokens": args.max_total_tokens,
              "enable_deterministic_inference": deterministic, "log_level": "warning"}
    if args.device:
        kwargs["device"] = args.device
    params = {"temperature": args.temperature, "max_new_tokens": args.output_len,
              "ignore_eos": True, "seed": 1234}
    with rollserve.Engine(model_path=args.model_path, **kwargs) as engine:
        engine.generate(input_ids=prompts[:2], sampling_params=dict(params, max_new_tokens=4))
        engine.flush_cache()
        start = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=params, return_logprob=True)
        elapsed = time.perf_counter() - start
        engine.flush_cache()
        alone = engine.generate(input_ids=probe, sampling_params=params, return_logprob=True)
    in_batch = outs[0]  # prompts[0] is the probe

    def lps(result):
        return [e[0] for e in result["meta_info"]["output_token_logprobs"]]

    out_tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    diffs = [abs(a - b) for a, b in zip(lps(alone), lps(in_batch))]
    return {"mode": "deterministic" if deterministic else "default", "seconds": round(elapsed, 3),
            "output_tok_s": round(out_tokens / elapsed, 1),
            "probe_tokens_equal": alone["output_ids"] == in_batch["output_ids"],
            "probe_logprobs_bitwise_equal": lps(alone) == lps(in_batch),
            "probe_max_abs_logprob_diff": max(diffs) if diffs else 0.0,
            "outputs": [o["output_ids"] for o in outs], "logprobs": [lps(o) for o in outs]}


def parity(args, prompts, row: dict) -> dict:
    from transformers import AutoModelForCausalLM

    dtype = {"auto": torch.bfloat16 if torch.cuda.is_available() else torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16,
             "float32": torch.float32}[args.dtype]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype).to(device).eval()
    trainer = trainer_logprobs(model, prompts, row["outputs"], args.temperature)
    del model
    return parity_report(row["logprobs"], trainer)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M")
    p.add_argument("--shape", default=None,
                   help="a bench/configs shape saved with seeded random weights (bf16), for a "
                        "device without the embedded model; parity then runs on those weights")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--skip-parity", action="store_true", help="no transformers forward")
    p.add_argument("--output-file", default=None)
    args = p.parse_args(argv)

    from transformers import AutoConfig

    from rollserve.frontend.server_args import ServerArgs
    from rollserve.frontend.startup import resolve_model_path

    if args.shape:
        import tempfile

        from rollserve.bench.synthetic_model import materialize_random_weights

        args.model_path = materialize_random_weights(
            args.shape, tempfile.mkdtemp(prefix="rollserve-shape-"))
    args.model_path = resolve_model_path(ServerArgs(model_path=args.model_path))
    vocab = AutoConfig.from_pretrained(args.model_path).vocab_size
    prompts = random_prompts(args.num_prompts, args.input_len, vocab, seed=0)
    rows = [run_mode(args, flag, prompts, prompts[0]) for flag in MODES.values()]
    if not args.skip_parity:
        for row in rows:
            row["parity_vs_transformers"] = parity(args, prompts, row)
    for row in rows:
        del row["outputs"], row["logprobs"]
    report = {"benchmark": "deterministic", "date": now_iso(), "device": device_name(),
              "commit": git_commit(), "model_path": args.model_path, "shape": args.shape, "dtype": args.dtype,
              "num_prompts": args.num_prompts, "input_len": args.input_len,
              "output_len": args.output_len, "temperature": args.temperature, "results": rows,
              "cost_ratio_default_over_deterministic": round(
                  rows[0]["output_tok_s"] / max(rows[1]["output_tok_s"], 1e-9), 2)}
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"\ndeterministic mode vs default: {report['num_prompts']} x {report['input_len']} in -> "
          f"{report['output_len']} out, {report['device']}, {report['date']}")
    print(f"{'mode':<15}{'output tok/s':>14}{'probe bitwise':>15}{'probe max|dlp|':>16}"
          f"{'HF mean|dlp|':>14}{'HF max|dlp|':>13}{'HF kl':>10}")
    for r in report["results"]:
        par = r.get("parity_vs_transformers") or {}
        print(f"{r['mode']:<15}{r['output_tok_s']:>14.1f}{str(r['probe_logprobs_bitwise_equal']):>15}"
              f"{r['probe_max_abs_logprob_diff']:>16.2e}{par.get('mean_abs_diff', float('nan')):>14.2e}"
              f"{par.get('max_abs_diff', float('nan')):>13.2e}{par.get('kl', float('nan')):>10.1e}")
    print(f"default / deterministic throughput: {report['cost_ratio_default_over_deterministic']}x")


if __name__ == "__main__":
    main()
