"""Expert parallelism's token exchange under DP attention: one MoE block (whole experts split
over N ranks, random weights) timed with the all-gather + all-reduce path beside the
all-to-all dispatch and combine (--moe-a2a-backend deepep), every rank bringing T tokens.

    python -m rollserve.bench.moe_dispatch --shape qwen3-30b-a3b --ranks 2 --tokens 1 64 512 4096

One process per rank (NCCL on CUDA, cuda:0..N-1; gloo on CPU with --device cpu). Rows:
milliseconds per block on each path, and the bytes a rank sends per block on each (the
all-gather path: its rows to every other rank, then a ring all-reduce of every rank's rows;
the dispatch: its tokens' copies that go to other ranks, out and back, as routed).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import socket
import time
from typing import List

import torch

from rollserve.bench.moe import print_rows
from rollserve.bench.synthetic_model import CONFIG_DIR


def block_shape(shape: str) -> dict:
    with open(os.path.join(CONFIG_DIR, shape, "config.json")) as f:
        config = json.load(f)
    experts = config.get("num_experts") or config.get("n_routed_experts") or config["num_local_experts"]
    return {"num_experts": experts, "top_k": config["num_experts_per_tok"],
            "hidden": config["hidden_size"],
            "intermediate": config.get("moe_intermediate_size") or config["intermediate_size"]}


def _timed(fn, device: torch.device, iters: int) -> float:
    import torch.distributed as dist

    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dist.barrier()
    return (time.perf_counter() - start) / iters


def _rank(rank: int, size: int, port: int, args: dict, results) -> None:
    from rollserve.executor.layers.moe import SparseMoeBlock
    from rollserve.executor.parallel_state import (destroy_tensor_parallel, init_tensor_parallel,
                                                   set_dp_attention, set_expert_parallel,
                                                   set_moe_a2a)
    from rollserve.kernels.moe import RoutingSpec

    cuda = args["device"] == "cuda"
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // size))
    dtype = torch.bfloat16 if cuda else torch.float32
    init_tensor_parallel(rank, size, f"tcp://127.0.0.1:{port}", device.type, timeout_s=300)
    set_expert_parallel(size)
    set_dp_attention(True)
    s = args["shape"]
    torch.manual_seed(0)  # the router alike on every rank; the experts differ (their own)
    with torch.device(device):
        block = SparseMoeBlock(s["hidden"], s["num_experts"], s["intermediate"],
                               RoutingSpec(top_k=s["top_k"]), layer_id=0).to(dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.02)
    elem = torch.tensor([], dtype=dtype).element_size()
    rows = []
    for tokens in args["tokens"]:
        x = torch.randn(tokens, s["hidden"], device=device, dtype=dtype)
        counts = [tokens] * size
        timed = {}
        with torch.inference_mode():
            for name, a2a in (("all_gather", False), ("all_to_all", True)):
                set_moe_a2a(a2a)
                timed[name] = _timed(lambda: block.moe(x, counts=counts), device, args["iters"])
            ids = block.gate(x)[1]
        per = s["num_experts"] // size
        remote = int((ids // per != rank).sum())  # this rank's copies that leave it
        row = s["hidden"] * elem
        rows.append({"shape": args["shape_name"], "ranks": size, "tokens_per_rank": tokens,
                     "all_gather_ms": round(timed["all_gather"] * 1e3, 4),
                     "all_to_all_ms": round(timed["all_to_all"] * 1e3, 4),
                     "speedup": round(timed["all_gather"] / timed["all_to_all"], 3),
                     "all_gather_bytes_sent": (size - 1) * tokens * row
                     + 2 * (size - 1) * tokens * row,  # all-gather + ring all-reduce of P*T rows
                     "all_to_all_bytes_sent": 2 * remote * row})
    if rank == 0:
        results.put(rows)
    destroy_tensor_parallel()


def run(shape_name: str, ranks: int, tokens: List[int], device: str, iters: int,
        shape: dict = None) -> List[dict]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = {"shape_name": shape_name, "shape": shape or block_shape(shape_name), "tokens": tokens,
            "device": device, "iters": iters}
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank, args=(r, ranks, port, args, results)) for r in range(ranks)]
    for p in procs:
        p.start()
    try:
        while True:  # rank 0's rows, unless a rank died first (the others would wait forever)
            try:
                rows = results.get(timeout=2)
                break
            except queue.Empty:
                failed = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(f"ranks {failed} failed (see their output above)")
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-30b-a3b")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 64, 512, 4096])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--output-file")
    args = parser.parse_args()
    rows = run(args.shape, args.ranks, args.tokens, args.device, args.iters)
    print_rows(rows)
    if args.output_file:  # gpu_report's summary row reads it
        with open(args.output_file, "w") as f:
            json.dump({"benchmark": "moe_dispatch", "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
