"""Decides, after each new token, whether a request is finished."""

from __future__ import annotations

from typing import FrozenSet

from rollserve.scheduler.request import Req


class StopChecker:
    def __init__(self, tokenizer, eos_token_ids: FrozenSet[int], context_len: int):
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.context_len = context_len
        self.special_ids = frozenset(getattr(tokenizer, "all_special_ids", None) or ())

    def check(self, req: Req) -> None:
        """Sets req.finished_reason when the last output token ends the request."""
        params = req.sampling_params
        token = req.output_ids[-1]
        if len(req.output_ids) < params.min_new_tokens:
            return self._check_length(req)
        if token in params.stop_token_ids or (
                not params.ignore_eos and token in self.eos_token_ids):
            return self._stop_on_token(req, token)
        if params.stop and self._check_stop_strings(req):
            return
        self._check_length(req)

    def _stop_on_token(self, req: Req, token: int) -> None:
        # As SGLang, the stop token is not part of the text: with skip_special_tokens off
        # (tool-call parsing needs the markers) EOS would otherwise end it as "<|im_end|>"
        if not req.sampling_params.skip_special_tokens and token in self.special_ids:
            req.trim_stop = self.tokenizer.decode([token], skip_special_tokens=False) or None
        req.finish("stop", matched=token)

    def _check_length(self, req: Req) -> None:
        if len(req.output_ids) >= req.sampling_params.max_new_tokens:
            req.finish("length", length=req.sampling_params.max_new_tokens)
        elif req.seq_len >= self.context_len:
            req.finish("length", length=len(req.output_ids), message="reached the context length")

    def _check_stop_strings(self, req: Req) -> bool:
        stops = req.sampling_params.stop
        # Every token decodes to at least one character in practice, so the last
        # len(longest stop) + 1 tokens hold any stop string ending at the new token.
        window = max(len(s) for s in stops) + 1
        tail = self.tokenizer.decode(req.output_ids[-window:],
                                     skip_special_tokens=req.sampling_params.skip_special_tokens)
        for stop in stops:
            if stop in tail:
                req.trim_stop = stop
                req.finish("stop", matched=stop)
                return True
        return False
