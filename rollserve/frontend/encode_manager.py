"""The tokenizer manager's encode / classify path: validate and tokenize each input,
send one TokenizedEmbeddingReq per input to the scheduler (which batches them with
everything else), wait for their EmbeddingOutputs and shape SGLang's results:
  /encode   -> {"embedding": [...], "meta_info": {...}}
  /classify -> {"embedding": scores, "scores": scores, "meta_info": {...}}
one dict per input, a list for a batch.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Dict, List, Optional

from rollserve.executor.pooling_model import PoolingSpec
from rollserve.frontend.encode_input import EncodeItem, EncodeReqInput, normalize_encode
from rollserve.core.io import EmbeddingOutput, TokenizedEmbeddingReq
from rollserve.core.sampling_params import InvalidRequest

logger = logging.getLogger(__name__)

EMBEDDING, CLASSIFICATION = "embedding", "classification"


class RequestAborted(RuntimeError):
    """The engine aborted an encode / classify request before it finished."""


class EmbeddingResult:
    """Collects one input's EmbeddingOutput (the tokenizer manager calls add())."""

    def __init__(self, msg: TokenizedEmbeddingReq, kind: str):
        self.msg = msg
        self.kind = kind
        self.start = time.perf_counter()
        self.out: Optional[EmbeddingOutput] = None

    def add(self, out: EmbeddingOutput) -> None:
        self.out = out

    def result(self) -> Dict[str, Any]:
        out = self.out
        if out.embedding is None:
            reason = out.finished_reason or {}
            raise RequestAborted(f"request {self.msg.rid} was aborted: "
                                 f"{reason.get('message', reason.get('type'))}")
        meta = {"id": self.msg.rid, "finish_reason": out.finished_reason,
                "prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens,
                "e2e_latency": time.perf_counter() - self.start,
                "weight_version": out.weight_version}
        if self.kind == CLASSIFICATION:
            return {"embedding": out.embedding, "scores": out.embedding, "meta_info": meta}
        return {"embedding": out.embedding, "meta_info": meta}


def wrong_model_error(spec: Optional[PoolingSpec], wanted: str, model_path: str) -> InvalidRequest:
    """The 400 for a request the served model cannot answer (wanted: generation | embedding |
    classification)."""
    served = "generation" if spec is None else spec.kind
    endpoints = {"generation": "/generate, /v1/chat/completions or /v1/completions",
                 EMBEDDING: "/encode or /v1/embeddings", CLASSIFICATION: "/classify"}
    hint = " (start the server with --is-embedding on an embedding or reward model)" \
        if served == "generation" else ""
    return InvalidRequest("model", f"the model {model_path} is for {served} (is_generation "
                                   f"{str(served == 'generation').lower()}); it cannot serve "
                                   f"{wanted} requests: use {endpoints[served]}{hint}")


async def run_encode(tm, obj: EncodeReqInput, kind: str):
    """Results for every input of `obj`, in order (a dict for a single input)."""
    from rollserve.frontend.result_format import ReqState

    tm._ensure_started()
    tm._check_alive()
    if tm.pooling is None or tm.pooling.kind != kind:
        raise wrong_model_error(tm.pooling, kind, tm.model_path)
    items, is_batch = normalize_encode(obj, allow_messages=kind == CLASSIFICATION)
    rids = [item.rid for item in items]
    tm.claim_rids(rids)
    msgs = []
    try:
        msgs = [TokenizedEmbeddingReq(rid=item.rid, input_ids=input_ids_of(tm, item)) for item in items]
        for msg in msgs:
            tm.states[msg.rid] = ReqState(EmbeddingResult(msg, kind))
            tm.send_sock.send_pyobj(msg)
            if tm.args.log_requests:
                logger.info("%s request %s: %d tokens", kind, msg.rid, len(msg.input_ids))
        results = [await _wait(tm, msg.rid) for msg in msgs]
    finally:
        tm._abort_unfinished(msgs)
        tm.release_rids(rids)
    return results if is_batch else results[0]


async def _wait(tm, rid: str) -> Dict[str, Any]:
    state = tm.states[rid]
    while not state.finished:
        await tm.wait_event(state.event)
        state.event.clear()
    return state.builder.result()


def input_ids_of(tm, item: EncodeItem) -> List[int]:
    """Token ids of one input, validated against the vocabulary and the length limit."""
    tokenizer, field = tm.tokenizer, item.field
    limit = min(tm.context_len, tm.max_total_num_tokens)
    truncate = tm.args.allow_auto_truncate
    if item.messages is not None:
        ids = render_conversation(tokenizer, item.messages)
    elif item.text is not None:
        # truncating in the tokenizer keeps the special tokens ([CLS] ... [SEP]) in place
        ids = tokenizer.encode(item.text, truncation=truncate, max_length=limit if truncate else None)
    else:
        ids = item.input_ids
        vocab = len(tokenizer)
        if any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest("input_ids", f"token ids must be in [0, {vocab})")
    if not ids:
        raise InvalidRequest(field, "the input is empty")
    if len(ids) > limit:
        if not truncate:
            raise InvalidRequest(field, (
                f"input {item.index} has {len(ids)} tokens, over the maximum input length {limit} "
                f"(context length {tm.context_len}, KV pool {tm.max_total_num_tokens})"))
        ids = ids[:limit]
    if tm.pooling.kind == CLASSIFICATION and tm.pooling.pad_token_id is not None:
        ids = drop_trailing_pads(ids, tm.pooling.pad_token_id)
    return list(ids)


def drop_trailing_pads(ids: List[int], pad_token_id: int) -> List[int]:
    """transformers' *ForSequenceClassification scores the last token that is not pad_token_id
    (the first token if all are). A causal model's hidden state there does not depend on the
    pads after it, so the engine runs the input without them and scores its last token."""
    end = len(ids)
    while end > 1 and ids[end - 1] == pad_token_id:
        end -= 1
    return ids[:end]


def render_conversation(tokenizer, conversation: List[dict]) -> List[int]:
    """A whole conversation (the reply to score included) through the chat template."""
    if not tokenizer.chat_template:
        raise InvalidRequest("messages", "the tokenizer has no chat template; start the server "
                                         "with --chat-template to score conversations")
    try:
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception as e:  # a template that rejects this conversation
        raise InvalidRequest("messages", f"cannot apply the chat template: {e}") from e
    return tokenizer.encode(text, add_special_tokens=False)


def pooling_health_check(tm, input_ids: List[int]):
    """/health_generate on an embedding or reward model: one input through the engine."""
    return run_encode(tm, EncodeReqInput(input_ids=list(input_ids)), tm.pooling.kind)
