"""Online serving benchmark against a running server's /generate (streamed), in the
layout of `sglang.bench_serving`'s summary.

    python -m rollserve.bench.serving --base-url http://127.0.0.1:30000 \\
        --num-prompts 64 --random-input-len 128 --random-output-len 32 --request-rate 4
    python -m rollserve.bench.serving --launch --server-args "--max-total-tokens 20000" ...

Prompts are random token ids (the "random" dataset); every request asks for exactly
its output length (ignore_eos). TTFT is the time to the first streamed token, ITL the
gap between two streamed chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shlex
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import List, Optional

import httpx


@dataclass
class RequestSpec:
    input_ids: List[int]
    output_len: int


@dataclass
class RequestResult:
    ok: bool = False
    prompt_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: List[float] = field(default_factory=list)
    error: str = ""


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, vocab: int,
                    seed: int) -> List[RequestSpec]:
    """Lengths uniform in [range_ratio * len, len], as SGLang's random dataset."""
    rng = random.Random(seed)
    low_in, low_out = max(int(input_len * range_ratio), 1), max(int(output_len * range_ratio), 1)
    specs = []
    for _ in range(num):
        n_in = rng.randint(low_in, input_len)
        specs.append(RequestSpec([rng.randrange(100, vocab - 100) for _ in range(n_in)],
                                 rng.randint(low_out, output_len)))
    return specs


async def send_one(client: httpx.AsyncClient, url: str, spec: RequestSpec) -> RequestResult:
    body = {"input_ids": spec.input_ids, "stream": True,
            "sampling_params": {"max_new_tokens": spec.output_len, "ignore_eos": True,
                                "temperature": 0}}
    result = RequestResult(prompt_len=len(spec.input_ids))
    start = last = time.perf_counter()
    tokens = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                now_tokens = chunk["meta_info"]["completion_tokens"]
                if now_tokens > tokens:
                    now = time.perf_counter()
                    if tokens == 0:
                        result.ttft = now - start
                    else:
                        result.itl.append(now - last)
                    last, tokens = now, now_tokens
        result.latency = time.perf_counter() - start
        result.output_len = tokens
        result.ok = True
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as e:
        result.error = f"{type(e).__name__}: {e}"
    return result


async def run_load(base_url: str, specs: List[RequestSpec], request_rate: float,
                   max_concurrency: Optional[int], seed: int):
    url = f"{base_url}/generate"
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(None), limits=limits) as client:
        await send_one(client, url, RequestSpec(specs[0].input_ids[:16], 4))  # warm-up

        async def limited(spec: RequestSpec) -> RequestResult:
            if limit is None:
                return await send_one(client, url, spec)
            async with limit:
                return await send_one(client, url, spec)

        tasks = []
        start = time.perf_counter()
        for spec in specs:
            tasks.append(asyncio.create_task(limited(spec)))
            if request_rate != float("inf"):
                await asyncio.sleep(rng.expovariate(request_rate))  # Poisson arrivals
        results = await asyncio.gather(*tasks)
        return results, time.perf_counter() - start


def _ms(values: List[float], how: str) -> float:
    if not values:
        return 0.0
    if how == "mean":
        return statistics.fmean(values) * 1000
    if how == "median":
        return statistics.median(values) * 1000
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(float(how[1:]) / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k] * 1000


def summarize(results: List[RequestResult], duration: float) -> dict:
    done = [r for r in results if r.ok]
    inputs = sum(r.prompt_len for r in done)
    outputs = sum(r.output_len for r in done)
    ttfts, latencies = [r.ttft for r in done], [r.latency for r in done]
    itls = [x for r in done for x in r.itl]
    return {
        "completed": len(done), "failed": len(results) - len(done), "duration": duration,
        "total_input_tokens": inputs, "total_output_tokens": outputs,
        "request_throughput": len(done) / duration,
        "input_throughput": inputs / duration, "output_throughput": outputs / duration,
        "total_throughput": (inputs + outputs) / duration,
        "concurrency": sum(latencies) / duration,
        "mean_e2e_latency_ms": _ms(latencies, "mean"), "median_e2e_latency_ms": _ms(latencies, "median"),
        "mean_ttft_ms": _ms(ttfts, "mean"), "median_ttft_ms": _ms(ttfts, "median"),
        "p99_ttft_ms": _ms(ttfts, "p99"),
        "mean_itl_ms": _ms(itls, "mean"), "median_itl_ms": _ms(itls, "median"),
        "p95_itl_ms": _ms(itls, "p95"), "p99_itl_ms": _ms(itls, "p99"),
        "max_itl_ms": max(itls) * 1000 if itls else 0.0,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def print_summary(s: dict, request_rate: float, max_concurrency: Optional[int]) -> None:
    def row(name: str, value) -> None:
        value = f"{value:.2f}" if isinstance(value, float) else value
        print("{:<40} {:<10}".format(name + ":", value))

    def title(text: str, fill: str) -> None:
        print("{s:{c}^{n}}".format(s=text, n=50, c=fill))

    title(" Serving Benchmark Result ", "=")
    row("Backend", "rollserve")
    row("Traffic request rate", request_rate)
    row("Max request concurrency", max_concurrency if max_concurrency else "not set")
    row("Successful requests", s["completed"])
    row("Benchmark duration (s)", s["duration"])
    row("Total input tokens", s["total_input_tokens"])
    row("Total generated tokens", s["total_output_tokens"])
    row("Request throughput (req/s)", s["request_throughput"])
    row("Input token throughput (tok/s)", s["input_throughput"])
    row("Output token throughput (tok/s)", s["output_throughput"])
    row("Total token throughput (tok/s)", s["total_throughput"])
    row("Concurrency", s["concurrency"])
    title("End-to-End Latency", "-")
    row("Mean E2E Latency (ms)", s["mean_e2e_latency_ms"])
    row("Median E2E Latency (ms)", s["median_e2e_latency_ms"])
    title("Time to First Token", "-")
    row("Mean TTFT (ms)", s["mean_ttft_ms"])
    row("Median TTFT (ms)", s["median_ttft_ms"])
    row("P99 TTFT (ms)", s["p99_ttft_ms"])
    title("Inter-Token Latency", "-")
    row("Mean ITL (ms)", s["mean_itl_ms"])
    row("Median ITL (ms)", s["median_itl_ms"])
    row("P95 ITL (ms)", s["p95_itl_ms"])
    row("P99 ITL (ms)", s["p99_itl_ms"])
    row("Max ITL (ms)", s["max_itl_ms"])
    print("=" * 50)
    if s["failed"]:
        print(f"{s['failed']} requests failed, e.g. {s['errors']}")


def vocab_size(base_url: str, tokenizer_path: Optional[str]) -> int:
    from transformers import AutoTokenizer

    if tokenizer_path is None:
        tokenizer_path = httpx.get(f"{base_url}/get_model_info", timeout=30).json()["tokenizer_path"]
    return len(AutoTokenizer.from_pretrained(tokenizer_path))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rollserve.bench.serving", description=__doc__)
    p.add_argument("--base-url", default=None, help="a running server; default http://127.0.0.1:30000")
    p.add_argument("--launch", action="store_true", help="start a server for the run, then stop it")
    p.add_argument("--server-args", default="", help="extra flags for the launched server")
    p.add_argument("--tokenizer", default=None, help="for the vocabulary size; default: the server's")
    p.add_argument("--dataset-name", default="random", choices=["random"])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=1.0,
                   help="lengths are uniform in [ratio * len, len]")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests per second (Poisson arrivals); inf sends all at once")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-file", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.launch and args.base_url:
        p.error("give --launch or --base-url, not both")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    server = None
    base_url = args.base_url or "http://127.0.0.1:30000"
    if args.launch:
        from rollserve.api.server import spawn_server, wait_until_healthy

        server, base_url = spawn_server(shlex.split(args.server_args))
        wait_until_healthy(base_url, server)
    try:
        vocab = vocab_size(base_url, args.tokenizer)
        specs = random_requests(args.num_prompts, args.random_input_len, args.random_output_len,
                                args.random_range_ratio, vocab, args.seed)
        results, duration = asyncio.run(run_load(base_url, specs, args.request_rate,
                                                 args.max_concurrency, args.seed))
        server_info = httpx.get(f"{base_url}/get_server_info", timeout=30).json()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    summary = summarize(results, duration)
    print_summary(summary, args.request_rate, args.max_concurrency)
    report = {"date": datetime.now(timezone.utc).isoformat(), "machine": platform.platform(),
              "config": {k: v for k, v in vars(args).items() if k != "output_file"},
              "server": {k: server_info.get(k) for k in ("model_path", "max_total_num_tokens",
                                                          "device", "dtype", "version")},
              **summary,
              "requests": [{k: v for k, v in asdict(r).items() if k != "itl"} for r in results]}
    report["config"]["request_rate"] = str(args.request_rate)
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
