"""The scheduler's counters and its periodic prefill / decode log lines (/get_server_info,
/metrics): what the steps did, kept apart from how they are chosen."""

from __future__ import annotations

import logging
import time
from typing import List

from rollserve.core.batch import ScheduleBatch
from rollserve.core.io import TokenOutput

# the scheduler's own logger: its "Prefill batch" / "Decode batch" lines are the scheduler's voice
logger = logging.getLogger("rollserve.scheduler.scheduler")


class SchedulerStats:
    """Counters for /get_server_info and /metrics."""

    def __init__(self, decode_log_interval: int = 0):
        self.decode_log_interval = decode_log_interval
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.num_retracted_reqs = 0  # requests retracted because the KV pool ran full
        self.peak_running_reqs = 0
        self.peak_gen_throughput = 0.0  # the best 1 s window: what a full batch decodes at
        self.last_gen_throughput = 0.0
        self.pending_outputs: List[TokenOutput] = []
        self._window_start = time.monotonic()
        self._window_tokens = 0
        self._decode_steps = 0
        self._log_start = time.monotonic()
        self._log_tokens = 0

    def record_step(self, batch: ScheduleBatch) -> None:
        decodes = sum(1 for e in batch.entries if e.is_decode)
        self.generation_tokens += sum(1 for e in batch.entries if e.sample)
        self.prompt_tokens += batch.num_tokens - decodes
        self._window_tokens += decodes
        self.peak_running_reqs = max(self.peak_running_reqs, decodes)
        elapsed = time.monotonic() - self._window_start
        if elapsed >= 1.0:
            self.last_gen_throughput = self._window_tokens / elapsed
            self.peak_gen_throughput = max(self.peak_gen_throughput, self.last_gen_throughput)
            self._window_start, self._window_tokens = time.monotonic(), 0
        if self.decode_log_interval:
            if decodes < len(batch.entries):
                self._log_prefill(batch, decodes)
            if decodes:
                self._log_decode(batch, decodes)

    @staticmethod
    def _log_prefill(batch: ScheduleBatch, decodes: int) -> None:
        """SGLang's 'Prefill batch' line (every step that computes prompt tokens)."""
        new_seqs = sum(1 for e in batch.entries if not e.is_decode and e.start == e.req.cached_tokens)
        logger.info("Prefill batch. #new-seq: %d, #new-token: %d, #running-req: %d", new_seqs,
                    batch.num_tokens - decodes, decodes)

    def _log_decode(self, batch: ScheduleBatch, decodes: int) -> None:
        """SGLang's periodic 'Decode batch' line: the running batch and the generation rate
        over the last decode_log_interval decode steps."""
        self._decode_steps += 1
        self._log_tokens += decodes
        if self._decode_steps % self.decode_log_interval:
            return
        now = time.monotonic()
        rate = self._log_tokens / max(now - self._log_start, 1e-9)
        logger.info("Decode batch. #running-req: %d, #new-token: %d, #step: %d, "
                    "gen throughput (token/s): %.2f", decodes, batch.num_tokens - decodes,
                    self._decode_steps, rate)
        self._log_start, self._log_tokens = now, 0

    def drain_pending(self) -> List[TokenOutput]:
        out, self.pending_outputs = self.pending_outputs, []
        return out

    def snapshot(self) -> dict:
        return {"prompt_tokens_total": self.prompt_tokens,
                "generation_tokens_total": self.generation_tokens,
                "last_gen_throughput": round(self.last_gen_throughput, 3),
                "num_retracted_reqs_total": self.num_retracted_reqs,
                "peak_running_reqs": self.peak_running_reqs,
                "peak_gen_throughput": round(self.peak_gen_throughput, 3)}
