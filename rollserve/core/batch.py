"""What one forward step computes: for each request, a run of new tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch



@dataclass
class BatchEntry:
    req: Any  # the scheduler's Req; the executor reads only its req_pool_idx
    start: int  # tokens of the request already in the KV pool
    tokens: List[int]  # new tokens computed this step (positions start, start+1, ...)
    slots: torch.Tensor  # KV slot of each new token
    sample: bool  # the last new token's logits give the request's next token
    logit_rows: List[int] = field(default_factory=list)  # offsets (within tokens) whose logits are needed
    is_decode: bool = False
    # a draft tree to verify: the parent row of each of `tokens` (core/draft_tree.py); None: a chain
    tree_parents: Optional[List[int]] = None

    @property
    def completes_prompt(self) -> bool:
        """After this step every token the request holds has its KV (evaluate before
        the sampled token is appended). A decode entry's request is past its prompt, also
        when the entry carries draft tokens to verify."""
        return self.is_decode or self.start + len(self.tokens) == self.req.seq_len


@dataclass
class ScheduleBatch:
    entries: List[BatchEntry]

    @property
    def num_tokens(self) -> int:
        return sum(len(e.tokens) for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)
