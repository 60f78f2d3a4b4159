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

    def __init__(self, decode_log_interval: int = 0, speculative: bool = False):
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
        self.spec = SpecCounters() if speculative else None  # speculative decoding's acceptance
        self.sources: list = []  # more counters, objects with snapshot() (scheduler/jump_forward.py)
        self._log_spec = SpecCounters()

    def record_step(self, batch: ScheduleBatch) -> None:
        decodes = sum(1 for e in batch.entries if e.is_decode)
        self.generation_tokens += sum(1 for e in batch.entries if e.sample)
        self.prompt_tokens += sum(len(e.tokens) for e in batch.entries if not e.is_decode)
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

    def record_verify(self, drafted: int, accepted: int, committed: int) -> None:
        """One request's verify step: drafts proposed, accepted, tokens committed (the
        accepted drafts and one more, fewer where the request finished among them)."""
        for counters in (self.spec, self._log_spec):
            counters.add(drafted, accepted, committed)
        extra = committed - 1  # record_step counts one token per decode entry
        self.generation_tokens += extra
        self._window_tokens += extra
        self._log_tokens += extra

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
        spec = ""
        if self.spec is not None:  # SGLang's wording, over this log interval
            spec = (f"accept len: {self._log_spec.accept_length:.2f}, "
                    f"accept rate: {self._log_spec.accept_rate:.2f}, ")
            self._log_spec = SpecCounters()
        logger.info("Decode batch. #running-req: %d, #new-token: %d, #step: %d, "
                    "%sgen throughput (token/s): %.2f", decodes, batch.num_tokens - decodes,
                    self._decode_steps, spec, rate)
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
                "peak_gen_throughput": round(self.peak_gen_throughput, 3),
                **(self.spec.snapshot() if self.spec is not None else {}),
                **{k: v for source in self.sources for k, v in source.snapshot().items()}}


class SpecCounters:
    """Verify steps and what they accepted, summed over requests."""

    def __init__(self):
        self.verify_ct = self.draft_tokens = self.accept_tokens = self.committed_tokens = 0

    def add(self, drafted: int, accepted: int, committed: int) -> None:
        self.verify_ct += 1
        self.draft_tokens += drafted
        self.accept_tokens += accepted
        self.committed_tokens += committed

    @property
    def accept_length(self) -> float:
        """Tokens committed per verify step of one request (1.0: no draft accepted)."""
        return self.committed_tokens / self.verify_ct if self.verify_ct else 0.0

    @property
    def accept_rate(self) -> float:
        return self.accept_tokens / self.draft_tokens if self.draft_tokens else 0.0

    def snapshot(self) -> dict:
        return {"spec_verify_ct_total": self.verify_ct, "spec_draft_tokens_total": self.draft_tokens,
                "spec_accept_tokens_total": self.accept_tokens,
                "avg_spec_accept_length": round(self.accept_length, 4),
                "spec_accept_rate": round(self.accept_rate, 4)}
