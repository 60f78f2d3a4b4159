"""The /encode and /classify request (SGLang's EmbeddingReqInput, plus chat conversations
for reward models) and its normalisation into one validated item per input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

from rollserve.frontend.request_input import _as_list, _is_id_list, _per_item
from rollserve.core.sampling_params import InvalidRequest

Conversation = List[dict]  # [{"role": ..., "content": ...}, ...]


@dataclass
class EncodeReqInput:
    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    # /classify only: one conversation or a list of them, rendered with the chat template
    messages: Optional[Union[Conversation, List[Conversation]]] = None
    rid: Optional[Union[str, List[str]]] = None


@dataclass
class EncodeItem:
    index: int
    rid: str
    text: Optional[str] = None
    input_ids: Optional[List[int]] = None
    messages: Optional[Conversation] = None

    @property
    def field(self) -> str:
        """The request field this item came from (for error messages)."""
        if self.messages is not None:
            return "messages"
        return "text" if self.text is not None else "input_ids"


def normalize_encode(req: EncodeReqInput, allow_messages: bool) -> Tuple[List[EncodeItem], bool]:
    """Returns the items and whether the request was a batch."""
    given = [name for name in ("text", "input_ids", "messages") if getattr(req, name) is not None]
    if len(given) != 1:
        names = "text, input_ids or messages" if allow_messages else "text or input_ids"
        raise InvalidRequest(given[1] if len(given) > 1 else "text", f"give exactly one of {names}")
    name = given[0]
    if name == "messages" and not allow_messages:
        raise InvalidRequest("messages", "conversations are scored by /classify; /encode takes "
                                         "text or input_ids")
    if name == "text":
        values, is_batch = _as_list(req.text, "text", lambda v: isinstance(v, str))
    elif name == "input_ids":
        values, is_batch = _as_list(req.input_ids, "input_ids", _is_id_list)
    else:
        values, is_batch = _conversations(req.messages)
    if not values:
        raise InvalidRequest(name, "the batch is empty")
    if isinstance(req.rid, str) and is_batch:  # one rid for a batch: rid-0, rid-1, ...
        rids = [f"{req.rid}-{i}" for i in range(len(values))]
    else:
        rids = _per_item(req.rid, len(values), "rid", str, default=None)
    given_rids = [r for r in rids if r is not None]
    if len(set(given_rids)) != len(given_rids):
        raise InvalidRequest("rid", "the rids of a batch must be distinct")
    items = []
    for i, value in enumerate(values):
        if name == "text" and value == "":
            raise InvalidRequest("text", f"input {i} is empty" if is_batch else "the input is empty")
        items.append(EncodeItem(index=i, rid=rids[i] or uuid.uuid4().hex,
                                **{name: list(value) if name != "text" else value}))
    return items, is_batch


def _conversations(messages: Any) -> Tuple[List[Conversation], bool]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages", "must be a conversation (a non-empty list of "
                                         "{role, content}) or a list of conversations")
    is_batch = all(isinstance(m, list) for m in messages)
    conversations = messages if is_batch else [messages]
    for i, conversation in enumerate(conversations):
        if not isinstance(conversation, list) or not conversation:
            raise InvalidRequest("messages", f"conversation {i} is empty or not a list")
        for j, message in enumerate(conversation):
            ok = (isinstance(message, dict) and isinstance(message.get("role"), str)
                  and isinstance(message.get("content"), str))
            if not ok:
                raise InvalidRequest("messages", f"conversation {i}, message {j}: needs a string "
                                                 "role and a string content")
    return conversations, is_batch
