"""The server's tokenizer over HTTP, in the shapes SGLang and vLLM share (lm-eval's
RemoteTokenizer probes /tokenizer_info and /tokenize when tokenizer_backend is left to
the server, then decodes through /detokenize):

* POST /tokenize {prompt: str | [str], add_special_tokens=true} or {messages, ...}
  -> {tokens, count, max_model_len}; a list of prompts gives lists.
* POST /detokenize {tokens: [int] | [[int]]} -> {text, prompt} (SGLang reads `text`,
  vLLM's clients `prompt`; both carry the same string).
* GET /tokenizer_info -> the special tokens, the chat template and the lengths.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from fastapi import FastAPI, Request
from pydantic import BaseModel

from rollserve.api.protocol import ApiError

MAX_TOKENIZE_ITEMS = 1024


class TokenizeRequest(BaseModel):
    model: Optional[str] = None
    prompt: Optional[Union[str, List[str]]] = None
    messages: Optional[List[Dict[str, Any]]] = None  # vLLM's chat variant
    add_special_tokens: Optional[bool] = None  # default: true for prompt, false for messages
    add_generation_prompt: bool = True
    tools: Optional[List[Any]] = None
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model: Optional[str] = None
    tokens: Union[List[int], List[List[int]]]


def add_tokenize_routes(app: FastAPI, state) -> None:
    from rollserve.api.body import parse_body

    tm = state.tm
    tokenizer = tm.tokenizer

    def check_model(name: Optional[str]) -> None:
        if name is not None:
            state.serving.check_model(name)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await parse_body(request, TokenizeRequest)
        check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt or messages", "prompt")
        if body.messages is not None:
            try:  # tools reach the template as on /v1/chat/completions
                text = tokenizer.apply_chat_template(body.messages, tools=body.tools or None,
                                                     tokenize=False,
                                                     add_generation_prompt=body.add_generation_prompt)
            except Exception as e:
                raise ApiError(400, f"cannot apply the chat template: {e}", "messages") from e
            ids = tokenizer.encode(text, add_special_tokens=bool(body.add_special_tokens))
            return _tokens_answer(ids, tm.context_len, body.return_token_strs, tokenizer)
        special = True if body.add_special_tokens is None else body.add_special_tokens
        if isinstance(body.prompt, list):
            if len(body.prompt) > MAX_TOKENIZE_ITEMS:
                raise ApiError(400, f"at most {MAX_TOKENIZE_ITEMS} prompts", "prompt")
            ids = [tokenizer.encode(p, add_special_tokens=special) for p in body.prompt]
            return {"tokens": ids, "count": [len(i) for i in ids], "max_model_len": tm.context_len}
        ids = tokenizer.encode(body.prompt, add_special_tokens=special)
        return _tokens_answer(ids, tm.context_len, body.return_token_strs, tokenizer)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await parse_body(request, DetokenizeRequest)
        check_model(body.model)
        vocab = len(tokenizer)
        batch = body.tokens and isinstance(body.tokens[0], list)
        lists = body.tokens if batch else [body.tokens]
        for ids in lists:
            if any(t < 0 or t >= vocab for t in ids):
                raise ApiError(400, f"token ids must be in [0, {vocab})", "tokens")
        texts = [tokenizer.decode(ids) for ids in lists]
        text = texts if batch else texts[0]
        return {"text": text, "prompt": text}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {
            "tokenizer_class": type(tokenizer).__name__,
            "eos_token": tokenizer.eos_token, "eos_token_id": tokenizer.eos_token_id,
            "bos_token": tokenizer.bos_token, "bos_token_id": tokenizer.bos_token_id,
            "pad_token": tokenizer.pad_token, "pad_token_id": tokenizer.pad_token_id,
            "unk_token": getattr(tokenizer, "unk_token", None),
            "chat_template": getattr(tokenizer, "chat_template", None),
            "vocab_size": len(tokenizer),
            "model_max_length": tm.context_len, "max_model_len": tm.context_len,
            "model_path": tm.tokenizer_path,
        }


def _tokens_answer(ids: List[int], max_len: int, with_strs: bool, tokenizer) -> dict:
    out = {"tokens": ids, "count": len(ids), "max_model_len": max_len}
    if with_strs:
        out["token_strs"] = tokenizer.convert_ids_to_tokens(ids)
    return out
