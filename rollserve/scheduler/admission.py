"""How many KV slots the scheduler keeps back for tokens not generated yet.

A running request will still write up to `remaining_new_tokens` KV slots, but most
stop early (EOS, stop strings), so reserving all of them wastes the pool and
reserving none makes it overflow. SGLang's answer, followed here: expect a share
`new_token_ratio` of each request's remaining tokens. The ratio starts conservative,
decays a little every decode step that needed no retraction (the pool proved big
enough, so admit more), and jumps back up when the pool ran full and requests had to
be retracted.

Where the length is known, no guess is made: a request that ignores EOS and has no
stop strings or stop tokens will generate exactly its max_new_tokens (an RL rollout
with ignore_eos), and every request generates at least min_new_tokens.
"""

from __future__ import annotations

from typing import Iterable

from rollserve.scheduler.request import Req

# SGLang's defaults (its global_config): the ratio starts at 0.7 x conservativeness, decays
# linearly over 600 decode steps to 0.14 x conservativeness.
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO_FACTOR = 0.14
NEW_TOKEN_RATIO_DECAY_STEPS = 600
# After a retraction the requests left must be able to decode this many steps on the
# slots freed (SGLang's retract_decode_steps), so the next retraction is not next step.
RETRACT_DECODE_STEPS = 20
# A request asking for 100k new tokens is not expected to use them all (SGLang's
# SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION default).
CLIP_MAX_NEW_TOKENS = 4096


class NewTokenRatio:
    """The share of a request's remaining new tokens reserved for it."""

    def __init__(self, conservativeness: float = 1.0):
        self.init = min(1.0, INIT_NEW_TOKEN_RATIO * conservativeness)
        self.min = min(self.init, MIN_NEW_TOKEN_RATIO_FACTOR * conservativeness)
        self.decay = (self.init - self.min) / NEW_TOKEN_RATIO_DECAY_STEPS
        self.value = self.init

    def decode_step(self) -> None:
        """A decode step ran without retracting anything."""
        self.value = max(self.min, self.value - self.decay)

    def retracted(self, running: Iterable[Req]) -> None:
        """The pool ran full: back to at least the initial ratio, or to the share of their
        max_new_tokens the running requests have already used (plus a few steps), if higher:
        they evidently run long."""
        running = list(running)
        used = sum(len(r.output_ids) for r in running) + RETRACT_DECODE_STEPS * len(running)
        total = sum(r.sampling_params.max_new_tokens for r in running)
        observed = used / total if total else 1.0
        self.value = min(1.0, max(self.init, observed))


def length_is_fixed(req: Req) -> bool:
    """Whether the request will generate exactly max_new_tokens (nothing can stop it early)."""
    p = req.sampling_params
    return p.ignore_eos and not p.stop and not p.stop_token_ids


def expected_new_tokens(req: Req, ratio: float) -> int:
    """KV slots to keep back for the request's tokens still to come."""
    remaining = min(req.remaining_new_tokens, CLIP_MAX_NEW_TOKENS)
    if length_is_fixed(req):
        return remaining
    certain = max(0, req.sampling_params.min_new_tokens - len(req.output_ids))
    return max(min(certain, remaining), int(remaining * ratio))


def decode_reserve(reqs: Iterable[Req], ratio: float) -> int:
    return sum(expected_new_tokens(r, ratio) for r in reqs)
