"""Which running requests give their KV slots back when the pool runs full.

A retracted request keeps its tokens and goes back to the front of the queue; its
computed KV goes into the radix cache, so re-admitting it recomputes only what was
evicted meanwhile. The requests that lose the least work go first: the fewest
generated tokens (ties: the longest prompt, which frees the most). Enough of them go
at once that the rest can decode RETRACT_DECODE_STEPS steps before the pool is full
again, instead of one retraction per step.
"""

from __future__ import annotations

from typing import Callable, List

from rollserve.scheduler.admission import RETRACT_DECODE_STEPS
from rollserve.scheduler.request import Req


def retraction_order(running: List[Req]) -> List[Req]:
    """Running requests, the cheapest to retract first."""
    return sorted(running, key=lambda r: (len(r.output_ids), -len(r.input_ids)))


def decode_steps_need(req: Req) -> int:
    """Slots the request writes in the next RETRACT_DECODE_STEPS steps (fewer near its end)."""
    return min(RETRACT_DECODE_STEPS, max(1, req.remaining_new_tokens))


def pick_and_retract(running: List[Req], available: Callable[[], int],
                     retract: Callable[[Req], None]) -> List[Req]:
    """Retract (through `retract`) the cheapest requests until those left fit for a while;
    at least one request stays. Returns the retracted requests, cheapest first."""
    order = retraction_order(running)
    need = sum(decode_steps_need(r) for r in order)
    retracted: List[Req] = []
    for req in order[:-1]:
        if available() >= need:
            break
        retract(req)
        need -= decode_steps_need(req)
        retracted.append(req)
    return retracted
