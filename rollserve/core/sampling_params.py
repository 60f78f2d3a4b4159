"""Per-request sampling parameters, SGLang's names, validated in one place."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Optional, Union

MAX_N = 128  # samples per prompt in one request
MAX_TOP_LOGPROBS = 20  # as OpenAI's top_logprobs
# constrained decoding (scheduler/grammar.py): SGLang's three fields, at most one per request
GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf")
# which distribution returned logprobs describe (executor/sampler.py: compute_sampling_logprobs)
LOGPROB_MODES = ("scaled", "raw", "sampling")


class InvalidRequest(ValueError):
    """A request field is wrong. `field` names it so the API can report it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: Optional[Union[str, list]] = None
    stop_token_ids: Optional[list] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    n: int = 1
    seed: Optional[int] = None
    logit_bias: Optional[dict] = None
    # SGLang: free-form parameters for a custom logit processor (see the server's
    # --custom-logit-processor); carried untouched, ignored (with a note) without one
    custom_params: Optional[dict] = None
    # rollserve: None follows the server default (SGLang's: "scaled", or "raw" with
    # SGLANG_RETURN_ORIGINAL_LOGPROB=1); "sampling" is the filtered distribution sampled from
    logprob_mode: Optional[str] = None
    # constrained decoding, SGLang's names: a JSON schema (as a JSON string), a regex or an
    # EBNF grammar the output must match; at most one
    json_schema: Optional[str] = None
    regex: Optional[str] = None
    ebnf: Optional[str] = None

    @classmethod
    def from_dict(cls, params: Optional[dict]) -> "SamplingParams":
        params = dict(params or {})
        if "sampling_seed" in params and "seed" not in params:
            params["seed"] = params.pop("sampling_seed")
        known = {f.name for f in dataclasses.fields(cls)}
        for name in params:
            if name not in known:
                raise InvalidRequest(f"sampling_params.{name}", "unknown sampling parameter")
        sp = cls(**{k: v for k, v in params.items() if v is not None or k in ("stop", "seed")})
        sp.normalize_and_validate()
        return sp

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def normalize_and_validate(self, vocab_size: Optional[int] = None) -> None:
        def bad(name: str, msg: str):
            raise InvalidRequest(f"sampling_params.{name}", msg)

        def number(name: str, integer: bool = False):
            value = getattr(self, name)
            ok = isinstance(value, int) if integer else isinstance(value, (int, float))
            if not ok or isinstance(value, bool) or not math.isfinite(value):
                bad(name, f"must be {'an integer' if integer else 'a finite number'}, got {value!r}")
            return value

        for flag in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"):
            if not isinstance(getattr(self, flag), bool):
                bad(flag, f"must be true or false, got {getattr(self, flag)!r}")

        if number("max_new_tokens", True) < 0:
            bad("max_new_tokens", "must be >= 0")
        if number("min_new_tokens", True) < 0:
            bad("min_new_tokens", "must be >= 0")
        if self.min_new_tokens > self.max_new_tokens:
            bad("min_new_tokens", "must be <= max_new_tokens")
        if number("temperature") < 0:
            bad("temperature", "must be >= 0")
        if not 0 < number("top_p") <= 1:
            bad("top_p", "must be in (0, 1]")
        top_k = number("top_k", True)
        if top_k == 0 or top_k < -1:
            bad("top_k", "must be -1 (disabled) or >= 1")
        if not 0 <= number("min_p") <= 1:
            bad("min_p", "must be in [0, 1]")
        if not -2 <= number("presence_penalty") <= 2:
            bad("presence_penalty", "must be in [-2, 2]")
        if not -2 <= number("frequency_penalty") <= 2:
            bad("frequency_penalty", "must be in [-2, 2]")
        if not 0 < number("repetition_penalty") <= 2:
            bad("repetition_penalty", "must be in (0, 2]")
        if not 1 <= number("n", True) <= MAX_N:
            bad("n", f"must be in [1, {MAX_N}]")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            bad("seed", f"must be an integer, got {self.seed!r}")
        if self.custom_params is not None and not isinstance(self.custom_params, dict):
            bad("custom_params", f"must be an object, got {type(self.custom_params).__name__}")
        if self.logprob_mode is not None and self.logprob_mode not in LOGPROB_MODES:
            bad("logprob_mode", f"must be one of {LOGPROB_MODES}, got {self.logprob_mode!r}")
        self.temperature = float(self.temperature)
        self._check_grammar(bad)
        self._normalize_stop(bad, vocab_size)
        self._normalize_logit_bias(bad, vocab_size)

    def _normalize_stop(self, bad, vocab_size: Optional[int] = None) -> None:
        if self.stop is None or self.stop == "":
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", "must be a non-empty string or a list of non-empty strings")
        ids = self.stop_token_ids or []
        if not isinstance(ids, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
        ):
            bad("stop_token_ids", "must be a list of non-negative integers")
        if vocab_size is not None and any(t >= vocab_size for t in ids):  # they index logits
            bad("stop_token_ids", f"token ids must be in [0, {vocab_size})")
        self.stop_token_ids = ids

    def _check_grammar(self, bad) -> None:
        """Shape only; whether the grammar compiles is the front end's check
        (frontend/grammar_check.py), which knows the grammar backend."""
        if isinstance(self.json_schema, dict):  # SGLang wants a JSON string; an object means the same
            self.json_schema = json.dumps(self.json_schema)
        given = [name for name in GRAMMAR_FIELDS if getattr(self, name) is not None]
        if len(given) > 1:
            bad(given[1], f"only one of json_schema, regex and ebnf may be set, got {given}")
        for name in given:
            if not isinstance(getattr(self, name), str):
                bad(name, f"must be a string, got {type(getattr(self, name)).__name__}")

    @property
    def grammar(self) -> Optional[tuple]:
        """(kind, text) of the constraint, kind one of GRAMMAR_FIELDS; None when unconstrained."""
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        return None

    def _normalize_logit_bias(self, bad, vocab_size: Optional[int]) -> None:
        if not self.logit_bias:
            self.logit_bias = None
            return
        if not isinstance(self.logit_bias, dict):
            bad("logit_bias", "must be a map from token id to bias")
        out = {}
        for key, value in self.logit_bias.items():
            try:
                token = int(key)
            except (TypeError, ValueError):
                bad("logit_bias", f"key {key!r} is not a token id")
            if token < 0 or (vocab_size is not None and token >= vocab_size):
                bad("logit_bias", f"token id {token} is out of range")
            if (not isinstance(value, (int, float)) or isinstance(value, bool)
                    or not -100 <= value <= 100):  # also refuses NaN
                bad("logit_bias", f"bias for token {token} must be a number in [-100, 100]")
            out[token] = float(value)
        self.logit_bias = out

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1
