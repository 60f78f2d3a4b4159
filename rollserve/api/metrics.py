"""Prometheus metrics in the text exposition format, written by hand.

Token counters and queue figures come from the scheduler (`tm.get_load()`); time to
first token and inter-token latency are measured here, from the arrival times of
results in the HTTP process, which is what a client sees minus the network.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Dict, List, Optional, Sequence, Tuple

PREFIX = "rollserve:"
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        if times <= 0:
            return
        self.counts[bisect.bisect_left(self.buckets, value)] += times
        self.total += value * times

    def lines(self, name: str, labels: str) -> List[str]:
        out, cumulative = [], 0
        for bound, count in zip(self.buckets + (float("inf"),), self.counts):
            cumulative += count
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f'{name}_bucket{{{labels},le="{le}"}} {cumulative}')
        out.append(f"{name}_sum{{{labels}}} {self.total}")
        out.append(f"{name}_count{{{labels}}} {cumulative}")
        return out


class ServerMetrics:
    """What the HTTP process measures itself; the rest is read from the scheduler."""

    def __init__(self, model_name: str):
        self.labels = f'model_name="{_escape(model_name)}"'
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.finished: Dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.prompt_tokens_seen = 0
        self.cached_tokens_seen = 0

    def on_finished(self, meta: Dict[str, Any], started: float) -> None:
        reason = (meta.get("finish_reason") or {}).get("type", "abort")
        self.finished[reason] = self.finished.get(reason, 0) + 1
        self.e2e.observe(time.perf_counter() - started)
        self.prompt_tokens_seen += meta.get("prompt_tokens", 0)
        self.cached_tokens_seen += meta.get("cached_tokens", 0)

    def render(self, load: Dict[str, Any]) -> str:
        lines: List[str] = []

        def metric(name: str, kind: str, help_text: str, value: Any) -> None:
            full = PREFIX + name
            lines.extend([f"# HELP {full} {help_text}", f"# TYPE {full} {kind}",
                          f"{full}{{{self.labels}}} {value}"])

        pool = load.get("max_total_num_tokens") or 1
        hit_rate = self.cached_tokens_seen / self.prompt_tokens_seen if self.prompt_tokens_seen else 0.0
        metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.",
               load.get("prompt_tokens_total", 0))
        metric("generation_tokens_total", "counter", "Tokens generated.",
               load.get("generation_tokens_total", 0))
        metric("num_running_reqs", "gauge", "Requests in the running batch.",
               load.get("num_running_reqs", 0))
        metric("num_queue_reqs", "gauge", "Requests waiting to be scheduled.",
               load.get("num_queued_reqs", 0))
        metric("token_usage", "gauge", "Share of the KV pool in use.",
               round(load.get("kv_used_tokens", 0) / pool, 6))
        metric("max_total_num_tokens", "gauge", "Size of the KV pool in tokens.", pool)
        metric("cache_hit_rate", "gauge", "Cached share of the prompt tokens of finished requests.",
               round(hit_rate, 6))
        metric("gen_throughput", "gauge", "Recent generation throughput (tokens/s).",
               load.get("last_gen_throughput", 0.0))
        if "avg_spec_accept_length" in load:  # speculative decoding is on (SGLang's names)
            metric("spec_accept_length", "gauge", "Tokens committed per verify step of a request.",
                   load["avg_spec_accept_length"])
            metric("spec_accept_rate", "gauge", "Accepted share of the draft tokens.",
                   load["spec_accept_rate"])
            metric("spec_verify_ct_total", "counter", "Verify steps, summed over requests.",
                   load["spec_verify_ct_total"])
        full = PREFIX + "num_requests_total"
        lines.extend([f"# HELP {full} Finished requests by finish reason.", f"# TYPE {full} counter"])
        lines.extend(f'{full}{{{self.labels},finish_reason="{k}"}} {v}'
                     for k, v in sorted(self.finished.items()))
        for name, hist, help_text in (
                ("time_to_first_token_seconds", self.ttft, "Time to first token."),
                ("inter_token_latency_seconds", self.itl, "Time between two output tokens."),
                ("e2e_request_latency_seconds", self.e2e, "Request latency, end to end.")):
            full = PREFIX + name
            lines.extend([f"# HELP {full} {help_text}", f"# TYPE {full} histogram"])
            lines.extend(hist.lines(full, self.labels))
        return "\n".join(lines) + "\n"


async def observed(results: AsyncIterator[Any], metrics: Optional[ServerMetrics]) -> AsyncIterator[Any]:
    """Pass the results of tm.generate() through, timing them; closes `results`
    whenever this generator is closed or cancelled."""
    async with aclosing(results):
        if metrics is None:
            async for out in results:
                yield out
            return
        started = time.perf_counter()
        seen: Dict[int, Tuple[int, float]] = {}  # index -> (tokens so far, time of the last one)
        finished = 0
        try:
            async for out in results:
                now = time.perf_counter()
                for item in (out if isinstance(out, list) else [out]):
                    finished += _observe_item(metrics, item, seen, started, now)
                yield out
        except (GeneratorExit, asyncio.CancelledError):
            if not finished:  # the client went away before the end
                metrics.finished["abort"] += 1
            raise


def _observe_item(metrics: ServerMetrics, item: Dict[str, Any], seen: Dict[int, Tuple[int, float]],
                  started: float, now: float) -> bool:
    """Records one result; returns whether it was the last of its sample."""
    meta = item["meta_info"]
    tokens = meta.get("completion_tokens", 0)
    index = item.get("index", 0)
    before, last = seen.get(index, (0, started))
    finished = meta.get("finish_reason") is not None
    if index not in seen and finished:
        # a whole answer at once (no stream): the engine timed its first token
        if "ttft" in meta:
            metrics.ttft.observe(meta["ttft"])
        if tokens > 1 and "ttft" in meta:
            metrics.itl.observe((meta["e2e_latency"] - meta["ttft"]) / (tokens - 1), tokens - 1)
    elif tokens > before and before == 0:
        metrics.ttft.observe(now - started)
    elif tokens > before:
        metrics.itl.observe((now - last) / (tokens - before), tokens - before)
    seen[index] = (tokens, now)
    if finished:
        metrics.on_finished(meta, started)
    return finished


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
