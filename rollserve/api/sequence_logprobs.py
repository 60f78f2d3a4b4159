"""POST /get_sequence_logprobs/: TRL's teacher-logprob endpoint (VLLMClient.get_sequence_logprobs,
used for knowledge distillation): logprobs of existing sequences, nothing generated.

    {sequences: [[int]], prompt_lengths: [int], top_logprobs=100, temperature=1.0,
     response_format: "json" | "binary"}

For every completion position (from prompt_length on) the top_logprobs most likely tokens
at that position, most likely first, as `trl vllm-serve` answers from vLLM's prompt logprobs:
* json: {logprobs: [[[float]]], logprob_token_ids: [[[int]]]}; a position lists the top-k and,
  when the sequence's own token is not among them, that token last (vLLM adds it); position 0
  (prompt_length 0) has no logprob and lists nothing;
* binary: base64 float32 / int32 arrays {logprobs_b64, token_ids_b64: [batch, longest
  completion, top_k], actual_logprobs_b64, actual_token_ids_b64: [batch, longest, 1] (the
  sequence's own token), shape, completion_lengths}; padding is -inf / 0.

Each sequence runs as a /generate request with max_new_tokens 0 and logprob_start_len =
prompt_length, so the values are the engine's input logprobs (scheduler/input_logprobs.py):
the model's plain log-softmax, which is the distribution at temperature 1. Other temperatures
are refused by name (the engine computes prompt logprobs unscaled).
"""

from __future__ import annotations

import base64
from typing import List

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel

from rollserve.api.engine_calls import generate_all
from rollserve.api.prompt_logprobs import MAX_PROMPT_LOGPROBS as MAX_TEACHER_TOP_LOGPROBS
from rollserve.api.protocol import ApiError
from rollserve.frontend.request_input import GenerateReqInput


class SequenceLogprobsRequest(BaseModel):
    sequences: List[List[int]]
    prompt_lengths: List[int]
    top_logprobs: int = 100
    temperature: float = 1.0
    response_format: str = "json"


def check_request(body: SequenceLogprobsRequest, vocab: int, max_len: int) -> None:
    """A 400 naming the field for anything malformed."""
    if len(body.sequences) != len(body.prompt_lengths):
        raise ApiError(400, f"prompt_lengths: {len(body.prompt_lengths)} lengths for "
                            f"{len(body.sequences)} sequences", "prompt_lengths")
    for i, (seq, pl) in enumerate(zip(body.sequences, body.prompt_lengths)):
        if not 0 <= pl <= len(seq):
            raise ApiError(400, f"prompt_lengths: sequence {i} has prompt_length {pl}, outside "
                                f"[0, {len(seq)}]", "prompt_lengths")
        if len(seq) > max_len:
            raise ApiError(400, f"sequences: sequence {i} has {len(seq)} tokens, over the "
                                f"maximum input length {max_len}", "sequences")
        if any(not 0 <= t < vocab for t in seq):
            raise ApiError(400, f"sequences: sequence {i} has a token id outside [0, {vocab})",
                           "sequences")
    if not 1 <= body.top_logprobs <= MAX_TEACHER_TOP_LOGPROBS:
        raise ApiError(400, f"top_logprobs: must be in [1, {MAX_TEACHER_TOP_LOGPROBS}]",
                       "top_logprobs")
    if body.temperature != 1.0:
        raise ApiError(400, "temperature: only 1.0 is served: prompt logprobs are the model's "
                            "unscaled log-softmax", "temperature")
    if body.response_format not in ("json", "binary"):
        raise ApiError(400, "response_format: must be json or binary", "response_format")


def positions_of(result: dict, seq: List[int], pl: int, k: int) -> List[tuple]:
    """Per completion position: (top-k [(logprob, id)], (own logprob, own id)) or None."""
    meta = result["meta_info"]
    own = meta["input_token_logprobs"]  # [logprob or None, id, text] from position pl on
    tops = meta["input_top_logprobs"]
    out = []
    for j, pos in enumerate(range(pl, len(seq))):
        if own[j][0] is None:  # position 0: nothing predicts the first token
            out.append(None)
            continue
        out.append(([(e[0], e[1]) for e in tops[j][:k]], (own[j][0], seq[pos])))
    return out


def json_response(per_seq: List[List[tuple]]) -> dict:
    logprobs, token_ids = [], []
    for positions in per_seq:
        seq_lp, seq_ids = [], []
        for p in positions:
            if p is None:
                seq_lp.append([])
                seq_ids.append([])
                continue
            top, (own_lp, own_id) = p
            entries = top + ([(own_lp, own_id)] if own_id not in {t for _, t in top} else [])
            seq_lp.append([lp for lp, _ in entries])
            seq_ids.append([t for _, t in entries])
        logprobs.append(seq_lp)
        token_ids.append(seq_ids)
    return {"logprobs": logprobs, "logprob_token_ids": token_ids}


def binary_response(per_seq: List[List[tuple]], k: int) -> dict:
    lengths = [len(positions) for positions in per_seq]
    longest = max(lengths, default=0)
    shape = (len(per_seq), longest, k)
    lp = np.full(shape, -np.inf, dtype=np.float32)
    ids = np.zeros(shape, dtype=np.int32)
    own_lp = np.full(shape[:2] + (1,), -np.inf, dtype=np.float32)
    own_ids = np.zeros(shape[:2] + (1,), dtype=np.int32)
    for i, positions in enumerate(per_seq):
        for t, p in enumerate(positions):
            if p is None:
                continue
            top, (value, token) = p
            lp[i, t, :len(top)] = [v for v, _ in top]
            ids[i, t, :len(top)] = [tok for _, tok in top]
            own_lp[i, t, 0], own_ids[i, t, 0] = value, token

    def b64(a: np.ndarray) -> str:
        return base64.b64encode(a.tobytes()).decode("ascii")

    return {"logprobs_b64": b64(lp), "token_ids_b64": b64(ids), "actual_logprobs_b64": b64(own_lp),
            "actual_token_ids_b64": b64(own_ids), "shape": list(shape),
            "completion_lengths": lengths}


def add_sequence_logprobs_route(app: FastAPI, state) -> None:
    from rollserve.api.body import parse_body

    async def get_sequence_logprobs(request: Request):
        body = await parse_body(request, SequenceLogprobsRequest)
        state.serving.check_generation()
        state.check_alive()
        tm = state.tm
        check_request(body, len(tm.tokenizer), tm.max_req_input_len)
        k = body.top_logprobs
        # a sequence with no completion needs no forward
        todo = [i for i, (seq, pl) in enumerate(zip(body.sequences, body.prompt_lengths))
                if pl < len(seq)]
        per_seq: List[List[tuple]] = [[] for _ in body.sequences]
        if todo:
            obj = GenerateReqInput(input_ids=[body.sequences[i] for i in todo],
                                   sampling_params={"max_new_tokens": 0}, return_logprob=True,
                                   logprob_start_len=[body.prompt_lengths[i] for i in todo],
                                   top_logprobs_num=k, max_top_logprobs=MAX_TEACHER_TOP_LOGPROBS)
            for i, result in zip(todo, await generate_all(tm, obj)):
                per_seq[i] = positions_of(result, body.sequences[i], body.prompt_lengths[i], k)
        if body.response_format == "binary":
            return binary_response(per_seq, k)
        return json_response(per_seq)

    for path in ("/get_sequence_logprobs/", "/get_sequence_logprobs"):
        app.add_api_route(path, get_sequence_logprobs, methods=["POST"])
