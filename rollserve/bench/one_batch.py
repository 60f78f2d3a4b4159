"""Latency of one static batch: prefill, then decode steps, through the model runner alone
(no scheduler, no processes), set beside the weight-bandwidth roofline.

    python -m rollserve.bench.one_batch --shape llama-3.2-1b --batch-size 1 8 64 \\
        --input-len 512 --output-len 64 --hf-baseline

Decode steps run as the engine's overlap scheduler runs them: step i+1's inputs name
the tokens step i is still sampling (greedy argmax, kept on the GPU), and the host
reads step i's tokens while step i+1 runs. Decode tok/s = batch / mean step time
(`decode_step_ms`); `decode_step_sync_ms` is the same step with the host waiting for
each step's tokens before preparing the next; `graph_gpu_ms` is the replay time of the
decode CUDA graph alone (device events). The roofline is the time to read
every parameter once at the measured copy bandwidth (the issue's definition); the
same with the KV cache read per step is reported too.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
import torch

from rollserve.bench.kernel_profile import cuda_time_ms
from rollserve.bench.offline import device_name, git_commit, kernel_switches, now_iso, write_json


def copy_bandwidth(device, gib: float = 1.0) -> float:
    """Bytes read + written per second by a large device-to-device copy."""
    n = int(gib * 2**30)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = cuda_time_ms(lambda: dst.copy_(src), repeats=10) / 1e3
    del src, dst
    return 2 * n / seconds


def _requests(runner, batch: int, input_len: int, seed: int):
    from rollserve.scheduler.request import Req
    from rollserve.core.sampling_params import SamplingParams

    gen = torch.Generator().manual_seed(seed)
    reqs = []
    for i in range(batch):
        ids = torch.randint(100, runner.vocab_size - 1, (input_len,), generator=gen).tolist()
        req = Req(rid=f"b{i}", input_ids=ids, sampling_params=SamplingParams(max_new_tokens=1 << 20))
        req.req_pool_idx = runner.req_pool.alloc()
        reqs.append(req)
    return reqs


def _prefill_batch(runner, reqs):
    from rollserve.core.batch import BatchEntry, ScheduleBatch

    entries = []
    for req in reqs:
        slots = runner.allocator.alloc(len(req.input_ids))
        runner.req_pool.write(req.req_pool_idx, 0, slots)
        entries.append(BatchEntry(req, 0, req.input_ids, slots, sample=True,
                                  logit_rows=[len(req.input_ids) - 1]))
        req.kv_len = len(req.input_ids)
    return ScheduleBatch(entries)


def _decode_batch(runner, reqs):
    """One new token per request, named by placeholder (the token being sampled on the GPU)."""
    from rollserve.executor.forward_batch import placeholder_for
    from rollserve.core.batch import BatchEntry, ScheduleBatch

    slots = runner.allocator.alloc(len(reqs))
    entries = [BatchEntry(r, r.kv_len, [placeholder_for(r.req_pool_idx)], s, sample=True,
                          logit_rows=[0], is_decode=True) for r, s in zip(reqs, slots.split(1))]
    runner.req_pool.write_each([r.req_pool_idx for r in reqs], [r.kv_len for r in reqs], slots)
    for req in reqs:
        req.kv_len += 1
    return ScheduleBatch(entries)


def _sync(runner) -> None:
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)


def _decode_steps(runner, reqs, rows, steps: int, overlap: bool) -> float:
    """Mean seconds per greedy decode step."""
    from rollserve.kernels.dispatch import HostCopy

    pending = None
    _sync(runner)
    start = time.perf_counter()
    for _ in range(steps):
        next_ids = runner.forward(_decode_batch(runner, reqs)).logits.argmax(dim=-1)
        runner.future_tokens[rows] = next_ids
        copy = HostCopy(next_ids)
        if overlap:  # the host reads the previous step's tokens while this one runs
            if pending is not None:
                pending.wait().tolist()
            pending = copy
        else:
            copy.wait().tolist()
    if pending is not None:
        pending.wait().tolist()
    return (time.perf_counter() - start) / steps


def run_batch(runner, batch: int, input_len: int, output_len: int) -> dict:
    from rollserve.kernels.dispatch import host_to_device

    reqs = _requests(runner, batch, input_len, seed=batch)
    rows = host_to_device(torch.tensor([r.req_pool_idx for r in reqs]), runner.device)
    _sync(runner)
    start = time.perf_counter()
    first = runner.forward(_prefill_batch(runner, reqs)).logits.argmax(dim=-1)
    first.tolist()
    prefill_s = time.perf_counter() - start
    runner.future_tokens[rows] = first
    sync_s = _decode_steps(runner, reqs, rows, max(2, output_len // 4), overlap=False)
    decode_s = _decode_steps(runner, reqs, rows, output_len, overlap=True)
    graph_ms = _graph_replay_ms(runner, batch)
    for req in reqs:
        runner.allocator.free(runner.req_pool.slots(req.req_pool_idx, req.kv_len))
        runner.req_pool.free(req.req_pool_idx)
    return {"batch_size": batch, "input_len": input_len, "output_len": output_len,
            "prefill_ms": round(prefill_s * 1e3, 3),
            "prefill_tok_s": round(batch * input_len / prefill_s, 1),
            "decode_step_ms": round(decode_s * 1e3, 4), "decode_tok_s": round(batch / decode_s, 1),
            "decode_step_sync_ms": round(sync_s * 1e3, 4), "graph_gpu_ms": graph_ms}


def _graph_replay_ms(runner, batch: int):
    graphs = runner.graph_runner
    if graphs is None or batch > graphs.max_bs:
        return None
    import bisect

    graph = graphs.graphs[graphs.sizes[bisect.bisect_left(graphs.sizes, batch)]]
    return round(cuda_time_ms(graph.replay, repeats=25, warmup=5), 4)


def profile_decode(runner, batch: int, input_len: int) -> list:
    """Kernel times of one decode step: graph replays, or eager steps without graphs."""
    from rollserve.bench.kernel_profile import kernel_table, print_kernel_table
    from rollserve.kernels.dispatch import host_to_device

    graphs = runner.graph_runner
    if graphs is not None and batch <= graphs.max_bs:
        import bisect

        graph = graphs.graphs[graphs.sizes[bisect.bisect_left(graphs.sizes, batch)]]
        table = kernel_table(graph.replay)
    else:
        reqs = _requests(runner, batch, input_len, seed=batch)
        rows = host_to_device(torch.tensor([r.req_pool_idx for r in reqs]), runner.device)
        runner.future_tokens[rows] = runner.forward(_prefill_batch(runner, reqs)).logits.argmax(dim=-1)
        table = kernel_table(lambda: runner.forward(_decode_batch(runner, reqs)))
        for req in reqs:
            runner.allocator.free(runner.req_pool.slots(req.req_pool_idx, req.kv_len))
            runner.req_pool.free(req.req_pool_idx)
    print(f"bs={batch}:")
    print_kernel_table(table)
    return table


def weight_bytes(model) -> dict:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    embed = model.model.embed_tokens.weight
    lookup_only = 0 if model.lm_head is None else embed.numel() * embed.element_size()
    return {"all_params": total, "read_per_decode_step": total - lookup_only}


def hf_generate_baseline(model_path: str, input_len: int, output_len: int) -> dict:
    """transformers' generate at batch size 1 (bf16, same dummy-weight architecture)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    prompt = torch.randint(100, config.vocab_size - 1, (1, input_len), device="cuda")

    def timed(new_tokens: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    timed(output_len)  # the same call warm: caches, and any compilation generate triggers
    seconds = timed(output_len)
    del model
    torch.cuda.empty_cache()
    return {"backend": "transformers generate (bs=1)", "new_tokens": output_len,
            "decode_tok_s": round(output_len / seconds, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shape", default=None, help="a config under rollserve/bench/configs (dummy weights)")
    p.add_argument("--model-path", default=None, help="an HF folder instead of --shape")
    p.add_argument("--load-format", default=None, help="default: dummy with --shape, else auto")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--input-len", type=int, default=512)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--attention-backend", default=None)
    p.add_argument("--disable-cuda-graph", action="store_true")
    p.add_argument("--enable-torch-compile", action="store_true")
    p.add_argument("--hf-baseline", action="store_true", help="also time transformers generate at bs=1")
    p.add_argument("--profile-kernels", action="store_true",
                   help="also list each kernel's time per decode step (graph replays) at each batch size")
    p.add_argument("--output-file", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("one_batch needs a CUDA device")
    from rollserve.bench.synthetic_model import materialize
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.executor.model_runner import ModelRunner

    model_path = args.model_path or materialize(args.shape, tempfile.mkdtemp(prefix="rollserve-shape-"))
    load_format = args.load_format or ("dummy" if args.shape else "auto")
    bandwidth = copy_bandwidth("cuda")
    server_args = ServerArgs(model_path=model_path, load_format=load_format, dtype=args.dtype,
                             context_length=args.input_len + 2 * args.output_len + 16,  # warm-up, sync and overlapped steps
                             max_running_requests=max(args.batch_size),
                             cuda_graph_max_bs=max(args.batch_size),
                             attention_backend=args.attention_backend,
                             disable_cuda_graph=args.disable_cuda_graph,
                             enable_torch_compile=args.enable_torch_compile)
    runner = ModelRunner(server_args.executor_config())
    attention_backend = runner.attention_backend
    sizes = weight_bytes(runner.model)
    rows = []
    for batch in args.batch_size:
        run_batch(runner, batch, args.input_len, 4)  # Triton compiles per shape class: warm each
        row = run_batch(runner, batch, args.input_len, args.output_len)
        kv_bytes = runner.kv_pool.bytes_per_token(runner.model.num_layers, runner.model.num_kv_heads,
                                                  runner.model.head_dim, runner.dtype) * batch * (
            args.input_len + args.output_len // 2)
        row["roofline_tok_s"] = round(batch * bandwidth / sizes["all_params"], 1)
        row["roofline_with_kv_tok_s"] = round(batch * bandwidth / (sizes["read_per_decode_step"] + kv_bytes), 1)
        row["fraction_of_roofline"] = round(row["decode_tok_s"] / row["roofline_tok_s"], 3)
        if args.profile_kernels:
            row["kernels"] = profile_decode(runner, batch, args.input_len)
        rows.append(row)
        print(json.dumps(row), flush=True)
    del runner  # the graph runner refers back to it: collect the cycle to free the KV pool
    gc.collect()
    torch.cuda.empty_cache()
    report = {"benchmark": "one_batch", "shape": args.shape or model_path, "date": now_iso(),
              "device": device_name(), "commit": git_commit(), "dtype": args.dtype,
              "attention_backend": attention_backend,
              "cuda_graph": not args.disable_cuda_graph, "torch_compile": args.enable_torch_compile,
              "copy_bandwidth_tb_s": round(bandwidth / 1e12, 3), "param_bytes": sizes["all_params"],
              "switches": kernel_switches(), "results": rows}
    if args.hf_baseline:
        report["baseline"] = hf_generate_baseline(model_path, args.input_len, args.output_len)
    print_table(report)
    if args.output_file:
        write_json(report, args.output_file)
    return report


def print_table(report: dict) -> None:
    print(f"\none_batch {report['shape']}: {report['device']}, copy bandwidth "
          f"{report['copy_bandwidth_tb_s']} TB/s, params {report['param_bytes'] / 1e9:.2f} GB")
    print(f"{'bs':>5}{'prefill ms':>12}{'step ms':>10}{'graph ms':>10}{'decode tok/s':>14}"
          f"{'roofline':>10}{'fraction':>10}")
    for r in report["results"]:
        print(f"{r['batch_size']:>5}{r['prefill_ms']:>12.2f}{r['decode_step_ms']:>10.3f}"
              f"{(r['graph_gpu_ms'] or float('nan')):>10.3f}{r['decode_tok_s']:>14.1f}"
              f"{r['roofline_tok_s']:>10.1f}{r['fraction_of_roofline']:>10.3f}")
    if "baseline" in report:
        print(f"transformers generate (bs=1): {report['baseline']['decode_tok_s']} tok/s")


if __name__ == "__main__":
    main()
