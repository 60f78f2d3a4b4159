"""The native /generate request (SGLang's GenerateReqInput) and its normalisation
into one validated item per prompt."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

from rollserve.core.sampling_params import MAX_TOP_LOGPROBS, InvalidRequest, SamplingParams
from rollserve.frontend.multimodal import images_of


@dataclass
class GenerateReqInput:
    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    sampling_params: Optional[Union[dict, List[dict]]] = None
    rid: Optional[Union[str, List[str]]] = None
    return_logprob: Union[bool, List[bool]] = False
    logprob_start_len: Union[int, List[int]] = -1
    top_logprobs_num: Union[int, List[int]] = 0
    return_text_in_logprobs: bool = False
    stream: bool = False
    return_routed_experts: Union[bool, List[bool]] = False
    routed_experts_start_len: Union[int, List[int]] = 0
    image_data: Optional[Any] = None  # SGLang's: an image or a list per prompt (frontend/multimodal.py)
    # SGLang's: logprobs of these token ids at every logprob position (a list, or one per prompt)
    token_ids_logprob: Optional[Union[List[int], List[Optional[List[int]]]]] = None
    # the top_logprobs_num cap; an internal route may raise it (api/sequence_logprobs.py)
    max_top_logprobs: int = MAX_TOP_LOGPROBS


@dataclass
class PromptItem:
    """One prompt of a request (before expansion into n samples)."""

    index: int
    rid: str
    text: Optional[str]
    input_ids: Optional[List[int]]
    sampling_params: SamplingParams
    return_logprob: bool
    logprob_start_len: int
    top_logprobs_num: int
    return_routed_experts: bool = False
    routed_experts_start_len: int = 0
    extra: dict = field(default_factory=dict)
    images: List[Any] = field(default_factory=list)  # as sent; decoded by the tokenizer manager
    mm_inputs: Any = None  # core/multimodal.py's MultimodalInputs, once processed
    token_ids_logprob: Optional[List[int]] = None


def normalize(req: GenerateReqInput) -> Tuple[List[PromptItem], bool]:
    """Returns the prompt items and whether the request was a batch."""
    if (req.text is None) == (req.input_ids is None):
        raise InvalidRequest("text", "give exactly one of text or input_ids")
    if req.text is not None:
        prompts, is_batch = _as_list(req.text, "text", lambda v: isinstance(v, str))
    else:
        prompts, is_batch = _as_list(req.input_ids, "input_ids", _is_id_list)
    n = len(prompts)
    if n == 0:
        raise InvalidRequest("text" if req.text is not None else "input_ids", "the batch is empty")
    params = _per_item(req.sampling_params, n, "sampling_params", dict, default={})
    rids = _per_item(req.rid, n, "rid", str, default=None)
    logprob = _per_item(req.return_logprob, n, "return_logprob", bool, default=False)
    starts = _per_item(req.logprob_start_len, n, "logprob_start_len", int, default=-1)
    tops = _per_item(req.top_logprobs_num, n, "top_logprobs_num", int, default=0)
    routed = _per_item(req.return_routed_experts, n, "return_routed_experts", bool, default=False)
    routed_starts = _per_item(req.routed_experts_start_len, n, "routed_experts_start_len", int,
                              default=0)
    images = images_of(req.image_data, n)
    ids_logprob = _token_ids_logprob(req.token_ids_logprob, n)
    items = []
    for i in range(n):
        if not 0 <= tops[i] <= req.max_top_logprobs:
            raise InvalidRequest("top_logprobs_num", f"must be in [0, {req.max_top_logprobs}]")
        if starts[i] < -1:
            raise InvalidRequest("logprob_start_len", "must be >= -1")
        if routed_starts[i] < 0:
            raise InvalidRequest("routed_experts_start_len", "must be >= 0")
        if ids_logprob[i] is not None and not logprob[i]:
            raise InvalidRequest("token_ids_logprob", "needs return_logprob: true")
        items.append(PromptItem(
            index=i, rid=rids[i] or uuid.uuid4().hex,
            text=prompts[i] if req.text is not None else None,
            input_ids=list(prompts[i]) if req.input_ids is not None else None,
            sampling_params=SamplingParams.from_dict(params[i]),
            return_logprob=logprob[i], logprob_start_len=starts[i], top_logprobs_num=tops[i],
            return_routed_experts=routed[i], routed_experts_start_len=routed_starts[i],
            images=images[i], token_ids_logprob=ids_logprob[i]))
    return items, is_batch


def _token_ids_logprob(value, n: int) -> List[Optional[List[int]]]:
    """One list of token ids (or None) per prompt: a flat list applies to every prompt."""
    if not value:
        return [None] * n
    if _is_id_list(value):
        return [list(value)] * n
    if isinstance(value, list) and all(v is None or _is_id_list(v) for v in value):
        if len(value) != n:
            raise InvalidRequest("token_ids_logprob", f"has {len(value)} lists for {n} prompts")
        return [list(v) if v else None for v in value]
    raise InvalidRequest("token_ids_logprob", "must be a list of token ids, or one such list "
                                              "(or null) per prompt")


def _is_id_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def _as_list(value, name: str, is_single) -> Tuple[list, bool]:
    if is_single(value):
        return [value], False
    if isinstance(value, list) and all(is_single(v) for v in value):
        return list(value), True
    kind = "a string or a list of strings" if name == "text" else \
        "a list of token ids or a list of such lists"
    raise InvalidRequest(name, f"must be {kind}")


def _per_item(value, n: int, name: str, kind, default) -> list:
    if value is None:
        return [default] * n
    if isinstance(value, list) and kind is not list:
        if len(value) != n:
            raise InvalidRequest(name, f"has {len(value)} entries for {n} prompts")
        values = value
    else:
        values = [value] * n
    for v in values:
        ok = v is None or (isinstance(v, kind) and not (kind is int and isinstance(v, bool)))
        if not ok:
            raise InvalidRequest(name, f"must be of type {kind.__name__}, got {v!r}")
    return [default if v is None else v for v in values]
