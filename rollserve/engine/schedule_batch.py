"""What one forward step computes: for each request, a run of new tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch

from rollserve.engine.request import Req


@dataclass
class BatchEntry:
    req: Req
    start: int  # tokens of the request already in the KV pool
    tokens: List[int]  # new tokens computed this step (positions start, start+1, ...)
    slots: torch.Tensor  # KV slot of each new token
    sample: bool  # the last new token's logits give the request's next token
    logit_rows: List[int] = field(default_factory=list)  # offsets (within tokens) whose logits are needed

    @property
    def is_decode(self) -> bool:
        return len(self.tokens) == 1 and self.start == self.req.seq_len - 1


@dataclass
class ScheduleBatch:
    entries: List[BatchEntry]

    @property
    def num_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)
