"""Paged decode attention (kernels/decode_attention_triton.py) over its config grid, set
beside the copy-bandwidth roofline, so `decode_config`'s heuristic can follow measurements.

    python -m rollserve.bench.decode_attention --out decode_attention.json \\
        [--shapes 8b 1b] [--cases b1_ctx512 b290_lognormal ...] [--smoke]

Each case is a batch of requests with given lengths over a bf16 KV pool laid out as a fresh
allocator leaves it: each prompt one contiguous run, the decoded tail interleaved across the
batch (one slot per request per step). Each figure is one CUDA-graph replay of back-to-back
calls divided by their number (median of replays, device events); consecutive calls read
different copies of the case's KV (>= ROTATE_BYTES of pool in all, >= 2 copies), so every
call streams its KV from memory, not L2. TB/s counts the K and V rows read once; the roofline
is a large device-to-device copy (bytes read + written per second).

Configs: large batches (>= LARGE_BATCH, one split by the heuristic) time the full grid
(block_n x num_warps x num_stages), then splits 2 and 4 for the best few; small batches
time block_n x num_warps at the default stages, the best with the other stages, then
split counts around the heuristic's. Every config's output is checked against the default's.
--smoke runs tiny cases without CUDA graphs (wall-clock timing; on CPU it needs
TRITON_INTERPRET=1), to exercise the code paths before a GPU run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import torch

from rollserve.bench.gemv import time_graph
from rollserve.bench.offline import device_name, git_commit, now_iso, write_json
from rollserve.bench.one_batch import copy_bandwidth
from rollserve.kernels.decode_attention_triton import (MAX_SPLITS, DecodeConfig,
                                                       decode_attention_triton, decode_config,
                                                       decode_num_splits)

BLOCK_NS, NUM_WARPS, NUM_STAGES = (32, 64, 128), (4, 8), (1, 2, 3)
SHAPES = {"8b": (32, 8, 128), "1b": (32, 8, 64)}  # (q heads, KV heads, head dim)
SMOKE_SHAPES = {"smoke": (8, 2, 64)}
LOGNORMAL = (450, 0.6, 16, 4000)  # median, sigma, clipped to [lo, hi]


@dataclass(frozen=True)
class Case:
    batch: int
    context: int  # every request's length; 0: drawn log-normal (LOGNORMAL, or `lognormal`)
    lognormal: tuple = LOGNORMAL

    @property
    def name(self) -> str:
        return f"b{self.batch}_" + (f"ctx{self.context}" if self.context else "lognormal")


CASES = [Case(1, 512), Case(1, 4096), Case(8, 1024), Case(64, 1024), Case(290, 600),
         Case(1000, 400), Case(290, 0)]
SMOKE_CASES = [Case(1, 40), Case(3, 0, (20, 0.6, 1, 70))]
LARGE_BATCH = 64  # from here on: the full grid and split counts 2 and 4 (--smoke: 3)
TOP = 3  # configs carried into the split-count phase
PROMPT_FRACTION = 0.75  # of each request's tokens laid out contiguously (its prefill)
ROTATE_BYTES = 256 * 2**20  # KV copies cycled through per replay: 5x the H100's L2
MIN_CALLS, MAX_CALLS = 10, 200
SEED = 0


def sweep_configs() -> List[DecodeConfig]:
    """The full grid the benchmark draws from (the tests check every one)."""
    return [DecodeConfig(n, w, s) for n, w, s in itertools.product(BLOCK_NS, NUM_WARPS, NUM_STAGES)]


def case_lengths(case: Case, gen: torch.Generator) -> torch.Tensor:
    if case.context:
        return torch.full((case.batch,), case.context, dtype=torch.int64)
    median, sigma, lo, hi = case.lognormal
    drawn = torch.randn(case.batch, generator=gen, dtype=torch.float64) * sigma + math.log(median)
    return drawn.exp().round().clamp(lo, hi).long()


def fresh_allocator_slots(lengths: torch.Tensor) -> torch.Tensor:
    """[batch, max length] int32 slots from 0: the prompts back to back, then the decode
    steps, each giving the requests still decoding one consecutive slot apiece."""
    prompts = (lengths * PROMPT_FRACTION).long().clamp(min=1)
    tails = lengths - prompts
    table = torch.zeros(len(lengths), int(lengths.max()), dtype=torch.int64)
    starts = torch.cumsum(prompts, 0) - prompts
    for row, (start, n) in enumerate(zip(starts.tolist(), prompts.tolist())):
        table[row, :n] = torch.arange(start, start + n)
    owner = torch.repeat_interleave(torch.arange(len(lengths)), tails)
    step = torch.arange(len(owner)) - torch.repeat_interleave(torch.cumsum(tails, 0) - tails, tails)
    order = torch.argsort(step * len(lengths) + owner)  # step by step, requests in order
    slots = torch.empty_like(owner)
    slots[order] = int(prompts.sum()) + torch.arange(len(owner))
    table[owner, prompts[owner] + step] = slots
    return table.to(torch.int32)


def bench_dtype(dev: str) -> torch.dtype:
    """bfloat16; float16 in Triton's CPU interpreter (--smoke), whose tl.dot multiplies
    bfloat16's raw bits."""
    return torch.bfloat16 if dev == "cuda" else torch.float16


class DecodeInputs:
    """One case on the device: `copies` KV regions of the case's layout in one pool, q, out."""

    def __init__(self, shape, case: Case, dev: str, rotate_bytes: int, min_calls: int):
        q_heads, kv_heads, head_dim = shape
        gen = torch.Generator().manual_seed(SEED)
        lengths = case_lengths(case, gen)
        self.tokens = int(lengths.sum())
        dtype = bench_dtype(dev)
        self.kv_bytes = 2 * self.tokens * kv_heads * head_dim * dtype.itemsize  # K and V
        wanted = -(-rotate_bytes // self.kv_bytes)
        self.calls = max(min_calls, min(MAX_CALLS, wanted))
        self.copies = max(2, min(self.calls, wanted))
        table = fresh_allocator_slots(lengths)
        self.tables = [(table + 1 + i * self.tokens).to(dev) for i in range(self.copies)]  # 0: unused
        slots = 1 + self.copies * self.tokens
        self.k_cache = torch.empty(slots, kv_heads, head_dim, dtype=dtype, device=dev).normal_()
        self.v_cache = torch.empty_like(self.k_cache).normal_()
        self.req_pool_indices = torch.arange(case.batch, device=dev)
        self.seq_lens = lengths.to(dev)
        self.q = torch.randn(case.batch, q_heads, head_dim, dtype=dtype, device=dev)
        self.out = torch.empty_like(self.q)
        self.mean_len = self.tokens / case.batch

    def call(self, copy: int, num_splits: int, config: DecodeConfig,
             out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return decode_attention_triton(self.q, self.k_cache, self.v_cache, self.tables[copy],
                                       self.req_pool_indices, self.seq_lens, self.q.shape[-1] ** -0.5,
                                       num_splits, out=self.out if out is None else out,
                                       config=config)


def wall_us(fns: List[Callable[[], object]]) -> float:
    """--smoke: host wall-clock per call (no graphs; the interpreter's pace, not the kernel's)."""
    start = time.perf_counter()
    for fn in fns:
        fn()
    return (time.perf_counter() - start) * 1e6 / len(fns)


def roofline_bytes_per_s(smoke: bool) -> float:
    if not smoke:
        return copy_bandwidth("cuda")
    src = torch.empty(2**24, dtype=torch.uint8)
    start = time.perf_counter()
    src.clone()
    return 2 * src.numel() / (time.perf_counter() - start)


class CaseRunner:
    """Times configs of one case, each once, keeping every row."""

    def __init__(self, shape_name, shape, case, inputs, roofline, timer, large_batch):
        self.shape_name, self.shape, self.case, self.inputs = shape_name, shape, case, inputs
        self.roofline, self.timer = roofline, timer
        self.large = case.batch >= large_batch
        self.heuristic_splits = decode_num_splits(case.batch, shape[1], num_sms())
        self.default = decode_config(case.batch, shape[2])
        self.reference = inputs.call(0, self.heuristic_splits, self.default,
                                     torch.empty_like(inputs.q))
        self.rows: dict = {}

    def measure(self, config: DecodeConfig, num_splits: int) -> dict:
        key = (config, num_splits)
        if key in self.rows:
            return self.rows[key]
        row = {"shape": self.shape_name, "case": self.case.name, "batch": self.case.batch,
               "mean_len": round(self.inputs.mean_len, 1), **asdict(config), "num_splits": num_splits,
               "default": key == (self.default, self.heuristic_splits)}
        try:
            out = self.inputs.call(0, num_splits, config, torch.empty_like(self.inputs.q))
            row["err_vs_default"] = ((out.float() - self.reference.float()).norm()
                                     / self.reference.float().norm()).item()
            copies = self.inputs.copies
            fns = [lambda i=i: self.inputs.call(i % copies, num_splits, config)
                   for i in range(self.inputs.calls)]
            row["us"] = self.timer(fns)
        except Exception as e:  # a config the GPU cannot run (shared memory): recorded, not fatal
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            print(f"  {self.shape_name} {self.case.name} {config} splits={num_splits}: {row['error']}")
            self.rows[key] = row
            return row
        row["kv_gb"] = self.inputs.kv_bytes / 1e9
        row["tb_s"] = self.inputs.kv_bytes / (row["us"] * 1e-6) / 1e12
        row["roofline_tb_s"] = self.roofline / 1e12
        row["pct_roofline"] = 100 * row["tb_s"] / row["roofline_tb_s"]
        print_row(row)
        self.rows[key] = row
        return row

    def best(self, keys, top: int) -> list:
        timed = [k for k in keys if "us" in self.rows[k]]
        return sorted(timed, key=lambda k: self.rows[k]["us"])[:top]

    def run(self) -> List[dict]:
        h = self.heuristic_splits
        if self.large:
            first = sweep_configs()
            other_splits = [s for s in (2, 4) if s != h]
        else:
            first = [DecodeConfig(n, w, self.default.num_stages)
                     for n, w in itertools.product(BLOCK_NS, NUM_WARPS)]
            other_splits = sorted({max(1, h // 4), max(1, h // 2), min(MAX_SPLITS, 2 * h)} - {h})
        keys = [(c, h) for c in dict.fromkeys(first + [self.default])]
        for config, splits in keys:
            self.measure(config, splits)
        if not self.large:  # the other stage counts for the best tile shape
            best = next((k[0] for k in self.best(keys, 1)), self.default)
            for stages in NUM_STAGES:
                keys.append((DecodeConfig(best.block_n, best.num_warps, stages), h))
                self.measure(*keys[-1])
        carried = dict.fromkeys([k[0] for k in self.best(keys, TOP)] + [self.default])
        for config in carried:
            for splits in other_splits:
                self.measure(config, splits)
        return list(self.rows.values())


def num_sms() -> int:
    if not torch.cuda.is_available():
        return 132
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def print_row(r: dict) -> None:
    mark = "*" if r["default"] else " "
    config = f"n{r['block_n']:<3} w{r['num_warps']} s{r['num_stages']} splits {r['num_splits']:2d}"
    print(f"{mark}{r['shape']:6} {r['case']:15} {config} | {r['us']:9.1f} us {r['kv_gb']:7.4f} GB "
          f"{r['tb_s']:5.2f} TB/s ({r['pct_roofline']:3.0f}% of copy {r['roofline_tb_s']:.2f}) "
          f"err {r['err_vs_default']:.1e}")


def summarize(rows: List[dict]) -> List[dict]:
    """Per (shape, case): the fastest config against the default."""
    summary = []
    for shape, case in dict.fromkeys((r["shape"], r["case"]) for r in rows):
        timed = [r for r in rows if r["shape"] == shape and r["case"] == case and "us" in r]
        default = next((r for r in timed if r["default"]), None)
        best = min(timed, key=lambda r: r["us"], default=None)
        if best is None:
            continue
        summary.append({"shape": shape, "case": case, "best": best, "default": default,
                        "speedup": default["us"] / best["us"] if default else None})
    return summary


def print_summary(summary: List[dict]) -> None:
    def cfg(r):
        return f"n{r['block_n']} w{r['num_warps']} s{r['num_stages']} x{r['num_splits']}"

    print(f"\n{'shape':6} {'case':15} | {'default':16} {'us':>8} {'TB/s':>5} | {'best':16} "
          f"{'us':>8} {'TB/s':>5} {'%copy':>5} | speedup")
    for s in summary:
        d, b = s["default"], s["best"]
        dtxt = f"{cfg(d):16} {d['us']:8.1f} {d['tb_s']:5.2f}" if d else f"{'(failed)':31}"
        print(f"{s['shape']:6} {s['case']:15} | {dtxt} | {cfg(b):16} {b['us']:8.1f} {b['tb_s']:5.2f} "
              f"{b['pct_roofline']:5.0f} | {s['speedup'] or float('nan'):.2f}x")


def parse_selection(argv, description: str, shapes: dict, cases: list, smoke_shapes: dict,
                    smoke_cases: list, smoke_help: str, bench: str):
    """(args, shapes, cases) of a kernel bench's --shapes / --cases / --smoke / --out command
    line; SystemExit naming the flag when nothing is selected or no GPU is there to time."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=None, help=f"of {list(shapes)} (default: all)")
    p.add_argument("--cases", nargs="+", default=None,
                   help=f"of {[c.name for c in cases]} (default: all)")
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    all_cases = smoke_cases if args.smoke else cases
    shapes = smoke_shapes if args.smoke else shapes
    shapes = {k: v for k, v in shapes.items() if args.shapes is None or k in args.shapes}
    picked = [c for c in all_cases if args.cases is None or c.name in args.cases]
    if not shapes or not picked:
        raise SystemExit(f"--shapes/--cases: nothing selected (shapes {list(shapes)}, cases "
                         f"{[c.name for c in all_cases]})")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit(f"{bench} bench: needs a CUDA device (or --smoke)")
    return args, shapes, picked


def main(argv=None) -> dict:
    args, shapes, cases = parse_selection(
        argv, __doc__, SHAPES, CASES, SMOKE_SHAPES, SMOKE_CASES,
        "tiny shapes and cases, wall-clock timing, no CUDA graphs", "decode attention")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    roofline = roofline_bytes_per_s(args.smoke)
    print(f"copy roofline: {roofline / 1e12:.2f} TB/s (read + write); * = default config")
    rows = []
    for (shape_name, shape), case in itertools.product(shapes.items(), cases):
        if args.smoke:
            inputs = DecodeInputs(shape, case, dev, rotate_bytes=0, min_calls=2)
        else:
            inputs = DecodeInputs(shape, case, dev, ROTATE_BYTES, MIN_CALLS)
        runner = CaseRunner(shape_name, shape, case, inputs, roofline,
                            wall_us if args.smoke else time_graph, 3 if args.smoke else LARGE_BATCH)
        rows += runner.run()
        del inputs, runner
        if dev == "cuda":
            torch.cuda.empty_cache()
    summary = summarize(rows)
    print_summary(summary)
    elapsed = time.perf_counter() - started
    print(f"\n{len(rows)} configs timed in {elapsed:.0f} s")
    report = {"bench": "decode_attention", "device": device_name(), "date": now_iso(),
              "commit": git_commit(), "torch": torch.__version__, "smoke": args.smoke,
              "dtype": str(bench_dtype(dev)), "copy_roofline_tb_s": roofline / 1e12,
              "num_sms": num_sms(),
              "seconds": elapsed, "rows": rows,
              "summary": [{"shape": s["shape"], "case": s["case"], "speedup": s["speedup"],
                           "best": s["best"], "default": s["default"]} for s in summary]}
    if args.out:
        write_json(report, args.out)
    return report


if __name__ == "__main__":
    main()
