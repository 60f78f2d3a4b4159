"""Tree verify attention: the Triton tree kernel (kernels/tree_attention_triton.py, what the
triton backend runs for forwards carrying tree masks) beside the torch reference it replaces
there (attention_torch: gather each request's paged KV, masked SDPA per request).

    python -m rollserve.bench.tree_attention --out tree_attention.json [--shapes 8b 1b]
        [--cases b1_ctx4096_n8 ...] [--smoke]

A case is `batch` requests of `context` committed tokens in scattered pool slots, each
verifying a random tree of `nodes` rows (root + drafts, M = E) at positions context + depth,
over a bf16 pool (float16 in the interpreter, whose tl.dot multiplies bfloat16's raw bits).
Per case and path: the relative error ||out - ref|| / ||ref|| against the float32 reference,
and the time of one layer's call (KV store included), eager as tree forwards run: the median
of REPEATS synchronised loops of CALLS calls. TB/s counts the K and V rows read once. The
per-forward host work (packing the masks, the row blocks) is timed apart. --smoke runs tiny
cases on CPU under TRITON_INTERPRET=1 (the interpreter's pace, not the kernel's).
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List

import torch

from rollserve.bench.decode_attention import parse_selection
from rollserve.bench.offline import device_name, git_commit, now_iso, write_json
from rollserve.core.draft_tree import ancestor_mask, depths
from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.torch_native import TorchNativeBackend, attention_torch
from rollserve.executor.kv_pool import KVPool

SHAPES = {"8b": (32, 8, 128), "1b": (32, 8, 64), "qwen3-0.6b": (16, 8, 128)}
SMOKE_SHAPES = {"smoke": (4, 2, 16)}
CALLS, REPEATS = 20, 5
MAX_ERR = 2e-2  # bf16 inputs against the float32 reference


@dataclass(frozen=True)
class Case:
    batch: int
    context: int  # committed tokens per request
    nodes: int  # tree rows per request (the root and its drafts)

    @property
    def name(self) -> str:
        return f"b{self.batch}_ctx{self.context}_n{self.nodes}"


CASES = [Case(1, 512, 8), Case(1, 4096, 8), Case(1, 16384, 8), Case(8, 2048, 8),
         Case(32, 1024, 8), Case(32, 2048, 16), Case(64, 1024, 64)]
SMOKE_CASES = [Case(2, 40, 5), Case(1, 300, 4)]


def tree_context(shape, case: Case, dtype: torch.dtype, dev: str, seed: int = 0) -> ForwardContext:
    """The verify forward of `case` over a random pool (layer 0), trees drawn from `seed`."""
    _, kv_heads, head_dim = shape
    rng = random.Random(seed)
    seq = case.context + case.nodes
    pool = KVPool(case.batch * seq, 1, kv_heads, head_dim, dtype, dev)
    for buf in pool.k_buffers + pool.v_buffers:
        buf.normal_()
    slots = (torch.randperm(case.batch * seq, device=dev) + 1).view(case.batch, seq)
    req_to_token = slots.to(torch.int32)
    masks, positions = [], []
    for _ in range(case.batch):
        parents = [-1] + [rng.randrange(i) for i in range(1, case.nodes)]
        masks.append(ancestor_mask(parents).to(dev))
        positions.append(case.context + torch.tensor(depths(parents)))
    ints = lambda v: torch.tensor(v, dtype=torch.int64, device=dev)  # noqa: E731
    prefix, extend = [case.context] * case.batch, [case.nodes] * case.batch
    return ForwardContext(
        positions=torch.cat(positions).to(dev), out_cache_loc=slots[:, case.context:].reshape(-1),
        req_pool_indices=ints(range(case.batch)), req_to_token=req_to_token,
        prefix_lens=ints(prefix), extend_lens=ints(extend), seq_lens=ints([seq] * case.batch),
        extend_start_loc=ints([i * case.nodes for i in range(case.batch)]), kv_pool=pool,
        prefix_lens_cpu=prefix, extend_lens_cpu=extend, tree_masks=masks)


def float_copy(ctx: ForwardContext) -> ForwardContext:
    """ctx over a float32 copy of its pool (the reference in higher precision)."""
    pool = ctx.kv_pool
    pool32 = KVPool(1, 1, pool.num_kv_heads, pool.head_dim, torch.float32, pool.device)
    pool32.k_buffers = [pool.k_buffers[0].float()]
    pool32.v_buffers = [pool.v_buffers[0].float()]
    return ForwardContext(**{**ctx.__dict__, "kv_pool": pool32, "attn_metadata": None})


def timed_us(fn: Callable[[], object], calls: int, repeats: int, sync: Callable[[], None]) -> float:
    """Median over `repeats` of a synchronised loop of `calls` calls, microseconds per call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - start) * 1e6 / calls)
    return statistics.median(times)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if torch.isnan(out).any():
        return float("nan")
    return ((out.double() - ref.double()).norm() / ref.double().norm().clamp(min=1e-30)).item()


def run_case(shape_name: str, shape, case: Case, dev: str, dtype: torch.dtype, calls: int,
             repeats: int) -> dict:
    from rollserve.executor.attention.triton import TritonBackend, attention_triton, build_metadata

    q_heads, kv_heads, head_dim = shape
    ctx = tree_context(shape, case, dtype, dev)
    tokens, scale = case.batch * case.nodes, head_dim ** -0.5
    q, k, v = (torch.randn(tokens, h, head_dim, dtype=dtype, device=dev)
               for h in (q_heads, kv_heads, kv_heads))
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    ref = attention_torch(q.float(), k.float(), v.float(), float_copy(ctx), 0, scale)

    ctx.attn_backend = TritonBackend(dev, kv_heads)

    def prepare():
        ctx.attn_metadata = build_metadata(ctx, kv_heads, torch.device(dev))
        return ctx.attn_metadata.tree.plan(q_heads // kv_heads, kv_heads)

    prepare_us = timed_us(prepare, calls, repeats, sync)
    splits = prepare()[3]
    kernel = lambda: attention_triton(q, k, v, ctx, 0, scale)  # noqa: E731
    kernel_err = rel_err(kernel(), ref)
    kernel_us = timed_us(kernel, calls, repeats, sync)

    torch_ctx = ForwardContext(**{**ctx.__dict__, "attn_backend": TorchNativeBackend(dev, kv_heads),
                                  "attn_metadata": None})
    reference = lambda: attention_torch(q, k, v, torch_ctx, 0, scale)  # noqa: E731
    torch_err = rel_err(reference(), ref)
    torch_us = timed_us(reference, calls, repeats, sync)
    kv_bytes = 2 * case.batch * (case.context + case.nodes) * kv_heads * head_dim * q.element_size()
    return {"shape": shape_name, "case": case.name, "batch": case.batch, "context": case.context,
            "nodes": case.nodes, "splits": splits, "kernel_us": kernel_us, "torch_us": torch_us,
            "speedup": torch_us / kernel_us, "kernel_tb_s": kv_bytes / kernel_us / 1e6,
            "prepare_us": prepare_us, "kernel_err": kernel_err, "torch_err": torch_err,
            "ok": kernel_err < MAX_ERR}


def main(argv=None) -> dict:
    args, shapes, cases = parse_selection(argv, __doc__, SHAPES, CASES, SMOKE_SHAPES, SMOKE_CASES,
                                          "tiny cases (CPU: TRITON_INTERPRET=1)", "tree attention")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float16
    calls, repeats = (2, 1) if args.smoke else (CALLS, REPEATS)
    started = time.perf_counter()
    print("| shape | case | splits | triton us | torch us | speedup | triton TB/s | host prep us "
          "| err triton | err torch |\n|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for (shape_name, shape), case in itertools.product(shapes.items(), cases):
        row = run_case(shape_name, shape, case, dev, dtype, calls, repeats)
        rows.append(row)
        print(f"| {row['shape']} | {row['case']} | {row['splits']} | {row['kernel_us']:.1f} | "
              f"{row['torch_us']:.1f} | {row['speedup']:.2f}x | {row['kernel_tb_s']:.2f} | "
              f"{row['prepare_us']:.1f} | {row['kernel_err']:.1e}{'' if row['ok'] else ' FAIL'} | "
              f"{row['torch_err']:.1e} |", flush=True)
        if dev == "cuda":
            torch.cuda.empty_cache()
    failed = [f"{r['shape']}/{r['case']}" for r in rows if not r["ok"]]
    print(f"\n{len(rows)} cases in {time.perf_counter() - started:.0f} s; "
          + (f"kernel error above {MAX_ERR}: {failed}" if failed else "every kernel output matches"))
    report = {"benchmark": "tree_attention", "device": device_name(), "date": now_iso(),
              "commit": git_commit(), "torch": torch.__version__, "smoke": args.smoke,
              "dtype": str(dtype), "rows": rows, "all_ok": not failed}
    if args.out:
        write_json(report, args.out)
    if failed:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
