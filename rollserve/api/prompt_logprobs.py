"""vLLM's `prompt_logprobs` on /v1/completions: TRL's VLLMClient.get_sequence_logprobs sends
whole sequences with max_tokens 1 and prompt_logprobs k, and reads each choice's
`prompt_logprobs`: [None, {"<token id>": {logprob, rank, decoded_token}}, ...], one entry per
prompt position (nothing predicts the first), holding the k most likely tokens and the
prompt's own token at that position, as vLLM does.

The values are the engine's input logprobs (scheduler/input_logprobs.py): the model's plain
log-softmax, temperature not applied, as vLLM computes prompt logprobs. A prompt token
outside the top k carries rank k + 1 (rollserve does not rank the whole vocabulary; vLLM
gives its exact rank; TRL only sorts by it). Streaming with prompt_logprobs is refused.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from rollserve.api.protocol import ApiError

MAX_PROMPT_LOGPROBS = 100  # TRL's default top_logprobs for distillation


def check_prompt_logprobs(value: Optional[int], stream: bool) -> None:
    if value is None:
        return
    if not 0 <= value <= MAX_PROMPT_LOGPROBS:
        raise ApiError(400, f"prompt_logprobs must be in [0, {MAX_PROMPT_LOGPROBS}] (vLLM's -1, "
                            "the whole vocabulary, is not served)", "prompt_logprobs")
    if stream:
        raise ApiError(400, "prompt_logprobs is not served with stream: true", "prompt_logprobs")


def logprob_fields(top: Optional[int], prompt_top: Optional[int], echo: bool,
                   top_cap: int) -> Dict[str, Any]:
    """GenerateReqInput's logprob fields for completions' `logprobs` and `prompt_logprobs`."""
    wants = top is not None
    if prompt_top is None:
        return {"return_logprob": wants, "logprob_start_len": 0 if wants and echo else -1,
                "top_logprobs_num": top or 0}
    return {"return_logprob": True, "logprob_start_len": 0,
            "top_logprobs_num": max(top or 0, prompt_top),
            "max_top_logprobs": max(top_cap, MAX_PROMPT_LOGPROBS)}


def trim_tops(meta: dict, top: Optional[int]) -> None:
    """The engine ran with the larger of the two top counts: cut `logprobs`' lists to its own."""
    for key in ("input_top_logprobs", "output_top_logprobs"):
        if meta.get(key):
            meta[key] = [None if t is None else t[:top or 0] for t in meta[key]]


def prompt_logprobs_of(meta: dict, prompt: List[int], k: int) -> List[Optional[dict]]:
    """vLLM's per-position dicts from meta_info's input logprobs (text in the entries)."""
    own = meta.get("input_token_logprobs", [])
    tops = meta.get("input_top_logprobs") or [None] * len(own)
    out: List[Optional[dict]] = []
    for pos, (entry, top) in enumerate(zip(own, tops)):
        if pos == 0 or entry[0] is None:
            out.append(None)
            continue
        position = {str(t[1]): {"logprob": t[0], "rank": rank, "decoded_token": t[2]}
                    for rank, t in enumerate((top or [])[:k], start=1)}
        if str(prompt[pos]) not in position:
            position[str(prompt[pos])] = {"logprob": entry[0], "rank": k + 1,
                                          "decoded_token": entry[2]}
        out.append(position)
    return out
