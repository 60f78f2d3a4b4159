"""POST /v1/score: SGLang's scoring endpoint. For each item, the probabilities of the label
tokens as the next token after query + item (item + query with item_first).

    {query: str | [int], items: str | [str] | [[int]], label_token_ids: [int],
     apply_softmax: false, item_first: false, model}
    -> {scores: [[p(label) for label in label_token_ids] for item in items],
        model, usage: null, object: "scoring"}

As in SGLang, every query + item pair runs as its own /generate request with
token_ids_logprob = label_token_ids (one batch: the shared query prefix comes from the
radix cache), and the score is read from its first output position's
output_token_ids_logprobs. The request decodes greedily, so those logprobs are the
model's plain log-softmax at that position. apply_softmax normalizes over the labels
(softmax of their logprobs); otherwise each score is exp(logprob). Text is concatenated
as text (query + item, then tokenized as one string), ids as ids.
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

from fastapi import FastAPI, Request
from pydantic import BaseModel

from rollserve.api.engine_calls import generate_all
from rollserve.api.protocol import ApiError
from rollserve.frontend.request_input import GenerateReqInput

MAX_SCORE_ITEMS = 4096


class ScoringRequest(BaseModel):
    query: Optional[Union[str, List[int]]] = None
    items: Optional[Union[str, List[str], List[List[int]]]] = None
    label_token_ids: Optional[List[int]] = None
    apply_softmax: bool = False
    item_first: bool = False
    model: Optional[str] = None


def score_prompts(body: ScoringRequest, vocab: int) -> dict:
    """The GenerateReqInput fields of the request's pairs: text or input_ids. Raises a 400
    naming the field for a malformed request."""
    labels = body.label_token_ids
    if not labels:
        raise ApiError(400, "label_token_ids: give the token ids to score (a non-empty list)",
                       "label_token_ids")
    bad = [t for t in labels if not 0 <= t < vocab]
    if bad:
        raise ApiError(400, f"label_token_ids: token ids must be in [0, {vocab}), got {bad[0]}",
                       "label_token_ids")
    if body.query is None:
        raise ApiError(400, "query: required (text or token ids)", "query")
    if body.items is None or body.items == [] or body.items == "":
        raise ApiError(400, "items: give at least one item", "items")
    items = [body.items] if isinstance(body.items, str) else body.items
    if len(items) > MAX_SCORE_ITEMS:
        raise ApiError(400, f"items: at most {MAX_SCORE_ITEMS} per request", "items")
    text_query = isinstance(body.query, str)
    if any(isinstance(item, str) != text_query for item in items):
        raise ApiError(400, "items: must be text when the query is text and token ids when it "
                            "is token ids", "items")
    pairs = [item + body.query if body.item_first else body.query + item for item in items]
    if any(len(p) == 0 for p in pairs):
        raise ApiError(400, "query: the query and an item are both empty", "query")
    return {"text": pairs} if text_query else {"input_ids": pairs}


def scores_from(results: list, labels: List[int], apply_softmax: bool) -> List[List[float]]:
    out = []
    for result in results:
        positions = result["meta_info"].get("output_token_ids_logprobs") or []
        if not positions:  # max_new_tokens was capped to 0: the prompt fills the context
            raise ApiError(400, "items: a query + item pair leaves no room in the context for "
                                "the next token", "items")
        first = positions[0]
        logprobs = dict((token, lp) for lp, token, *_ in first)
        values = [logprobs[t] for t in labels]
        if apply_softmax:
            top = max(values)
            exps = [math.exp(v - top) for v in values]
            out.append([e / sum(exps) for e in exps])
        else:
            out.append([math.exp(v) for v in values])
    return out


def add_score_route(app: FastAPI, state) -> None:
    from rollserve.api.body import parse_body

    @app.post("/v1/score")
    async def score(request: Request):
        body = await parse_body(request, ScoringRequest)
        if body.model is not None:
            state.serving.check_model(body.model)
        state.serving.check_generation()
        state.check_alive()
        prompts = score_prompts(body, len(state.tm.tokenizer))
        obj = GenerateReqInput(**prompts, sampling_params={"max_new_tokens": 1, "temperature": 0.0},
                               return_logprob=True, token_ids_logprob=list(body.label_token_ids))
        out = await generate_all(state.tm, obj)
        return {"scores": scores_from(out, body.label_token_ids, body.apply_softmax),
                "model": state.serving.model_name, "usage": None, "object": "scoring"}
