"""--allow-auto-truncate: how an over-long prompt is cut, one rule for /generate and the
OpenAI routes.

SGLang cuts such a prompt to the context length and then clips max_new_tokens to what is
left, which is nothing. Here the prompt keeps its first tokens and gives up enough of its
end for the requested max_new_tokens, but never more than half of the budget (prompt plus
output: min(context length, KV pool)); a request that wants more output than that gets its
max_new_tokens clipped to what is left instead (the OpenAI routes do that; /generate stops
at the context length).
"""

from __future__ import annotations

from typing import List, Optional

DEFAULT_ROOM = 128  # room left for a request that does not say (SGLang's max_new_tokens default)


def truncate_prompt(ids: List[int], max_new_tokens: Optional[int], max_input_len: int) -> List[int]:
    """`ids` cut for --allow-auto-truncate; unchanged when within max_input_len (which is
    the budget minus one: every request may generate at least one token)."""
    if len(ids) <= max_input_len:
        return ids
    budget = max_input_len + 1
    room = max_new_tokens if isinstance(max_new_tokens, int) and max_new_tokens >= 0 else DEFAULT_ROOM
    keep = min(max_input_len, max(budget - room, budget // 2))
    return ids[:keep]
