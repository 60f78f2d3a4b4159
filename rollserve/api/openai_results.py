"""Engine results as OpenAI's fields: finish reasons, usage, the response metadata, and the
logprob shapes of chat (`ChoiceLogprobs`) and completions (`CompletionLogprobs`, vLLM's
"token_id:<id>" names when the client asked for ids). Pure functions of the engine's
meta_info, shared by the chat and completion plans in openai_serving.py.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from rollserve.api.protocol import (ChoiceLogprobs, CompletionLogprobs, PromptTokensDetails,
                                    TokenLogprob, TopLogprob, Usage)


def as_list(out: Union[dict, List[dict]]) -> List[dict]:
    return out if isinstance(out, list) else [out]


def finish_reason(meta: Dict[str, Any]) -> Optional[str]:
    reason = meta.get("finish_reason")
    return None if reason is None else reason.get("type")


def matched_stop(meta: Dict[str, Any]):
    """The stop string or token id that ended the answer (None unless it stopped on one)."""
    reason = meta.get("finish_reason") or {}
    return reason.get("matched") if reason.get("type") == "stop" else None


def response_metadata(items: List[dict]) -> Dict[str, Any]:
    """SGLang's response-level metadata: the weight_version of the (first) result."""
    return {"weight_version": items[0]["meta_info"].get("weight_version") if items else None}


def usage_of(metas: List[Dict[str, Any]], n: int) -> Usage:
    """Prompt and cached tokens count once per prompt, however many samples it had."""
    prompt = cached = 0
    for start in range(0, len(metas), n):
        group = metas[start:start + n]
        prompt += group[0]["prompt_tokens"]
        cached += max(m.get("cached_tokens", 0) for m in group)
    completion = sum(m["completion_tokens"] for m in metas)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=prompt + completion,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


# ---- logprob shapes ---------------------------------------------------------------------------
def _named(entry: list, ids_as_tokens: bool) -> str:
    """An engine logprob entry's token as text, or vLLM's "token_id:<id>"."""
    return f"token_id:{entry[1]}" if ids_as_tokens else entry[2]


def chat_logprobs(entries: List[list], tops: Optional[List[list]],
                  ids_as_tokens: bool = False) -> ChoiceLogprobs:
    """entries: [logprob, token_id, token_text] per output token (engine format)."""
    content = []
    for i, entry in enumerate(entries):
        top = tops[i] if tops is not None and i < len(tops) and tops[i] else []
        text = _named(entry, ids_as_tokens)
        content.append(TokenLogprob(
            token=text, logprob=entry[0], bytes=list(text.encode()),
            top_logprobs=[TopLogprob(token=_named(t, ids_as_tokens), logprob=t[0],
                                     bytes=list(_named(t, ids_as_tokens).encode())) for t in top]))
    return ChoiceLogprobs(content=content)


def completion_logprobs(entries: List[list], tops: Optional[List[Optional[list]]],
                        offset: int, ids_as_tokens: bool = False) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for i, entry in enumerate(entries):
        top = tops[i] if tops is not None and i < len(tops) else None
        out.tokens.append(_named(entry, ids_as_tokens))
        out.token_logprobs.append(entry[0])
        out.top_logprobs.append(None if top is None else
                                {_named(t, ids_as_tokens): t[0] for t in top})
        out.text_offset.append(offset)
        offset += len(entry[2] or "")
    return out


def extend_logprobs(a: CompletionLogprobs, b: CompletionLogprobs) -> CompletionLogprobs:
    return CompletionLogprobs(tokens=a.tokens + b.tokens,
                              token_logprobs=a.token_logprobs + b.token_logprobs,
                              top_logprobs=a.top_logprobs + b.top_logprobs,
                              text_offset=a.text_offset + b.text_offset)
