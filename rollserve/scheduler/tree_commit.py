"""After a tree verify step: the accepted path's KV slots become the request's own.

Every tree node computed its KV in a slot of its own at position kv_len + depth, so the
path's KV is already right where it lies: only the request's req_to_token row changes.
The row is rewritten as [root, accepted path nodes..., every other node], so truncating the
request to its committed length (scheduler/speculative.py, kv_manager.truncate) frees the
rejected nodes' slots, and with them their draft KV (executor/draft_runner.py keys the
draft's KV by the target's slot ids).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rollserve.core.batch import BatchEntry
from rollserve.core.draft_tree import path_rows


def keep_path_slots(req_pool, entry: BatchEntry, accepted: Sequence[int]) -> None:
    """Reorders entry's slots in its request's row: the path of the `accepted` draft tokens
    first (in path order), the rest after."""
    path = path_rows(entry.tree_parents, entry.tokens, accepted)
    on_path = set(path)
    order = path + [r for r in range(len(entry.tokens)) if r not in on_path]
    req_pool.write(entry.req.req_pool_idx, entry.start, entry.slots[torch.tensor(order)])
