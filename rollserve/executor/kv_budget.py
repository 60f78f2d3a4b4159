"""How many tokens the target's KV pool gets from the bytes --mem-fraction-static leaves it.

With a draft model (EAGLE, EAGLE3, NEXTN) the same budget also holds the draft's memory, as
in SGLang: its weights are loaded before the budget is read (on CUDA they are in use then;
on CPU they count with the target's weights, model_runner.py), and its one-layer KV pool
(executor/draft_runner.py) has a slot for every target slot plus each request row's scratch
slots. So a token costs the target's KV plus the draft's, and the pool gets fewer tokens
with a draft model on. `--max-total-tokens` bypasses the budget: it is the target's count.
"""

from __future__ import annotations


def kv_pool_tokens(budget_bytes: float, target_bytes_per_token: int,
                   draft_bytes_per_token: int = 0, draft_scratch_slots: int = 0) -> int:
    """The largest N with N * target + (N + scratch) * draft bytes within the budget (0 when
    not even the scratch slots fit)."""
    if target_bytes_per_token <= 0 or draft_bytes_per_token < 0 or draft_scratch_slots < 0:
        raise ValueError("bytes per token must be positive and the scratch slots non-negative")
    room = budget_bytes - draft_scratch_slots * draft_bytes_per_token
    return max(int(room // (target_bytes_per_token + draft_bytes_per_token)), 0)
