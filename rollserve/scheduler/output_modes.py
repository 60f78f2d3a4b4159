"""What a step's forward is for: generating tokens, or pooling hidden states (embedding /
reward models, scheduler/pooler.py). The scheduler asks its mode instead of branching on
the model kind: whether a prefix may come from the cache, whether an input may be split
into chunks, and which rows of a chunk need their logits (or hidden states)."""

from __future__ import annotations

from typing import List, Protocol

from rollserve.scheduler.request import Req


class OutputMode(Protocol):
    allows_prefix_cache: bool
    allows_chunking: bool

    def rows(self, req: Req, start: int, n: int) -> List[int]:
        """Offsets within the chunk [start, start + n) whose outputs this mode reads."""


class GenerationOutputs:
    """Token generation: any prefix may be reused and any prompt chunked; the rows whose
    logits score the next prompt token are read when the request asked for input logprobs
    (the row that samples is added by the scheduler)."""

    allows_prefix_cache = True
    allows_chunking = True

    @staticmethod
    def rows(req: Req, start: int, n: int) -> List[int]:
        if not req.wants_input_logprobs or req.output_ids:
            return []
        first = max(req.logprob_start_len, 1) - 1
        last = len(req.input_ids) - 2
        return [p - start for p in range(max(first, start), min(last, start + n - 1) + 1)]
