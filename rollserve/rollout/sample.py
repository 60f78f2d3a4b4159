"""One generated sample, read from a /generate result (SGLang's shape:
{text, output_ids, meta_info: {finish_reason, weight_version, *_token_logprobs, ...}})."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from rollserve.rollout.errors import RolloutError


@dataclass
class Sample:
    prompt_index: int  # which prompt of the generate() call it belongs to
    sample_index: int  # 0..n-1 within its group
    text: str
    output_ids: List[int]
    output_logprobs: Optional[List[float]]  # one per output token (when return_logprob)
    input_token_logprobs: Optional[List[Optional[float]]]  # prompt logprobs from logprob_start_len on
    finish_reason: dict  # {"type": "stop" | "length" | "abort", ...}
    weight_version: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    meta_info: dict  # the server's raw meta_info
    # [first output index, weight_version] per run of tokens one policy sampled
    weight_version_spans: List[List[Any]] = field(default_factory=list)
    stale_kv_tokens: int = 0  # tokens sampled on KV that older weights computed

    def token_weight_versions(self) -> List[str]:
        """The weight_version of every output token (spans expanded)."""
        out: List[str] = []
        bounds = [s[0] for s in self.weight_version_spans[1:]] + [len(self.output_ids)]
        for (start, version), end in zip(self.weight_version_spans, bounds):
            out.extend([version] * (end - start))
        return out


def _logprob_values(entries: Optional[list]) -> Optional[list]:
    """[[logprob, token_id, text|null], ...] -> [logprob, ...]."""
    return None if entries is None else [entry[0] for entry in entries]


def sample_from_result(result: Dict[str, Any], prompt_index: int, sample_index: int) -> Sample:
    meta = result["meta_info"]
    return Sample(
        prompt_index=prompt_index, sample_index=sample_index,
        text=result["text"], output_ids=list(result["output_ids"]),
        output_logprobs=_logprob_values(meta.get("output_token_logprobs")),
        input_token_logprobs=_logprob_values(meta.get("input_token_logprobs")),
        finish_reason=meta.get("finish_reason") or {},
        weight_version=meta.get("weight_version"),
        prompt_tokens=meta.get("prompt_tokens", 0),
        completion_tokens=meta.get("completion_tokens", len(result["output_ids"])),
        cached_tokens=meta.get("cached_tokens", 0),
        meta_info=meta,
        weight_version_spans=[list(s) for s in meta.get("weight_version_spans") or []],
        stale_kv_tokens=meta.get("stale_kv_tokens", 0))


def group_from_response(body: Any, prompt_index: int, n: int) -> List[Sample]:
    """The answer of one /generate call for one prompt with sampling_params.n = n:
    a dict when n == 1, else a list of n results in sample order."""
    results = body if isinstance(body, list) else [body]
    if len(results) != n:
        raise RolloutError(f"expected {n} results for prompt {prompt_index}, got {len(results)}",
                           body=body)
    return [sample_from_result(r, prompt_index, k) for k, r in enumerate(results)]
