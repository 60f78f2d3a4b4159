"""Turns one step's logits into next tokens, vectorized over the batch.

Per row, in order: logit_bias; repetition penalty (HF: divide positive,
multiply negative logits of tokens in prompt + output); frequency and
presence penalties (OpenAI: over output tokens); min_new_tokens (EOS and
stop_token_ids get -inf until enough tokens exist). Then greedy rows take the
argmax and the rest sample from temperature-scaled probabilities filtered by
top_k, top_p (over the top_k survivors) and min_p (relative to the top prob).

Sampling is the exponential race: with E ~ Exp(1) drawn independently per
token, argmax(p / E) is a draw from p. A row with a seed draws its E from a
generator seeded by (seed, tokens generated so far) alone, so its token does
not depend on which other rows share the batch or where it sits.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rollserve.core.sampling_params import SamplingParams
from rollserve.kernels.sampling import filtered_probs, sample_filtered

_MASK64 = (1 << 64) - 1


@dataclass
class SamplingRow:
    """One request's view for one decode step."""

    params: SamplingParams
    prompt_ids: List[int]
    output_ids: List[int]  # generated so far
    eos_token_ids: frozenset


class Sampler:
    def __init__(self, vocab_size: int, device, base_seed: int | None = None,
                 logit_processor: Optional[Callable] = None):
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.logit_processor = logit_processor  # --custom-logit-processor, see apply_custom_processor
        self.generator = torch.Generator(device=self.device)  # rows without a seed
        if base_seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(base_seed & _MASK64)
        self.row_generator = torch.Generator(device=self.device)  # reseeded per seeded row
        self.token_arrays = TokenArrays()

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        """logits [B, >=vocab_size] -> next token ids [B] (int64). Never modifies `logits`."""
        if logits.shape[0] != len(rows):
            raise ValueError(f"{logits.shape[0]} logit rows for {len(rows)} sampling rows")
        if logits.shape[-1] < self.vocab_size:
            raise ValueError(f"logits have {logits.shape[-1]} columns, vocab is {self.vocab_size}")
        # columns past the vocab are lm_head padding, not tokens
        logits = apply_custom_processor(logits[:, : self.vocab_size].float(), rows,
                                        self.logit_processor)
        logits = apply_penalties(logits, rows, self.token_arrays)
        self.token_arrays.end_step()
        sampled = [i for i, row in enumerate(rows) if not row.params.is_greedy]
        if not sampled:
            return logits.argmax(dim=-1)
        if len(sampled) == len(rows):
            return self._sample_rows(logits, rows)
        next_ids = logits.argmax(dim=-1)
        index = torch.tensor(sampled, dtype=torch.int64, device=logits.device)
        next_ids[index] = self._sample_rows(logits[index], [rows[i] for i in sampled])
        return next_ids

    def _sample_rows(self, logits: torch.Tensor, rows: Sequence[SamplingRow]) -> torch.Tensor:
        # the race is blind to each row's scale, so the weights need no renormalizing;
        # on CUDA a sort-free Triton kernel makes the same draw (kernels/sampling.py)
        noise = self._exponential_noise(rows, logits.shape)
        return sample_filtered(logits, [row.params for row in rows], noise)

    def _exponential_noise(self, rows: Sequence[SamplingRow], shape) -> torch.Tensor:
        """Exp(1) draws as -log(U), U in [0, 1): never 0, so a zero weight never becomes
        0/0 = nan (which argmax would pick). Also 4x faster than exponential_ on CPU."""
        uniform = torch.empty(shape, dtype=torch.float32, device=self.device)
        if any(row.params.seed is None for row in rows):
            uniform.uniform_(generator=self.generator)
        for i, row in enumerate(rows):
            if row.params.seed is not None:
                self.row_generator.manual_seed(row_seed(row.params.seed, len(row.output_ids)))
                uniform[i].uniform_(generator=self.row_generator)
        return uniform.log_().neg_()


# ---- custom logit processor (SGLang's custom_params) ------------------------------------------

def load_logit_processor(spec: Optional[str]) -> Optional[Callable]:
    """"module:attribute" -> the callable (a class is instantiated without arguments).
    It is the operator's code, named by a server flag; requests only pass parameters."""
    if not spec:
        return None
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"custom_logit_processor must be MODULE:ATTRIBUTE, got {spec!r}")
    target = getattr(importlib.import_module(module_name), attribute)
    return target() if isinstance(target, type) else target


def apply_custom_processor(logits: torch.Tensor, rows: Sequence[SamplingRow],
                           processor: Optional[Callable]) -> torch.Tensor:
    """SGLang's contract: processor(logits [n, V], [custom_params of each row]) -> logits,
    called on the rows whose request set sampling_params.custom_params. Returns `logits`
    itself when no row does, else a changed copy."""
    picked = [i for i, row in enumerate(rows) if row.params.custom_params is not None]
    if processor is None or not picked:
        return logits
    logits = logits.clone()
    index = torch.tensor(picked, dtype=torch.int64, device=logits.device)
    out = processor(logits[index], [rows[i].params.custom_params for i in picked])
    if not isinstance(out, torch.Tensor) or out.shape != (len(picked), logits.shape[1]):
        raise ValueError(f"the custom logit processor must return logits of shape "
                         f"{(len(picked), logits.shape[1])}")
    logits[index] = out.to(logits.dtype)
    return logits


# ---- penalties ----------------------------------------------------------------------------

def apply_penalties(logits: torch.Tensor, rows: Sequence[SamplingRow],
                    token_arrays: Optional["TokenArrays"] = None) -> torch.Tensor:
    """logit_bias, repetition, frequency/presence and min_new_tokens, in that order.

    Returns `logits` itself when no row asks for any of them, else a changed copy.
    Works on (row, token) pairs rather than dense [B, V] masks: only the tokens a
    request has seen are touched.
    """
    vocab = logits.shape[-1]
    bias = [(i, row) for i, row in enumerate(rows) if row.params.logit_bias]
    repetition = [(i, row) for i, row in enumerate(rows) if row.params.repetition_penalty != 1.0]
    counted = [(i, row) for i, row in enumerate(rows) if row.output_ids and
               (row.params.frequency_penalty != 0.0 or row.params.presence_penalty != 0.0)]
    blocked = [(i, row) for i, row in enumerate(rows) if len(row.output_ids) < row.params.min_new_tokens]
    if not (bias or repetition or counted or blocked):
        return logits
    as_array = token_arrays if token_arrays is not None else TokenArrays()
    logits = logits.clone()
    if bias:
        _add_logit_bias(logits, bias)
    if repetition:
        seen = [(i, as_array(t)) for i, row in repetition for t in (row.prompt_ids, row.output_ids)]
        r, c = _flat_index(seen, vocab, logits.device)
        penalty = _per_row(rows, lambda p: p.repetition_penalty, logits.device)[r]
        # duplicate (row, token) pairs all write the same value, so their order does not matter
        scores = logits[r, c]
        logits[r, c] = torch.where(scores < 0, scores * penalty, scores / penalty)
    if counted:
        r, c = _flat_index([(i, as_array(row.output_ids)) for i, row in counted], vocab, logits.device)
        presence = _per_row(rows, lambda p: p.presence_penalty, logits.device)[r]
        frequency = _per_row(rows, lambda p: p.frequency_penalty, logits.device)[r]
        logits[r, c] = logits[r, c] - presence  # once per distinct token, as above
        logits.index_put_((r, c), -frequency, accumulate=True)  # once per occurrence
    if blocked:
        stops = [(i, sorted(row.eos_token_ids | set(row.params.stop_token_ids or ()))) for i, row in blocked]
        r, c = _flat_index(stops, vocab, logits.device)
        logits[r, c] = float("-inf")
    return logits


class TokenArrays:
    """int64 copies of the token lists the penalties read, kept from one step to the next.

    A running request hands over the same prompt and output list objects every step
    and its output only grows, so after the first step a list costs just its new
    tail rather than a full conversion (~50 ns a token). Lists not used in a step
    are dropped at its end.
    """

    def __init__(self):
        # id(list) -> (the list, its tokens); holding the list keeps its id from being reused
        self._last_step: Dict[int, Tuple[Sequence[int], np.ndarray]] = {}
        self._this_step: Dict[int, Tuple[Sequence[int], np.ndarray]] = {}

    def __call__(self, tokens: Sequence[int]) -> np.ndarray:
        key = id(tokens)
        _, known = self._this_step.get(key) or self._last_step.get(key) or (None, _NO_TOKENS)
        n = len(known)
        if n > len(tokens) or (n and known[-1] != tokens[n - 1]):  # not the list we saw grow
            known, n = _NO_TOKENS, 0
        if len(tokens) > n:
            known = np.concatenate([known, np.asarray(tokens[n:], dtype=np.int64)])
        self._this_step[key] = (tokens, known)
        return known

    def end_step(self) -> None:
        self._last_step, self._this_step = self._this_step, {}

    def __len__(self) -> int:
        return len(self._last_step)


_NO_TOKENS = np.empty(0, dtype=np.int64)


def _add_logit_bias(logits: torch.Tensor, bias_rows) -> None:
    r, c, values = [], [], []
    for i, row in bias_rows:
        for token, value in row.params.logit_bias.items():
            if 0 <= int(token) < logits.shape[-1]:  # ids past the vocab cannot be sampled anyway
                r.append(i)
                c.append(int(token))
                values.append(float(value))
    if r:
        index = (torch.tensor(r, device=logits.device), torch.tensor(c, device=logits.device))
        logits.index_put_(index, torch.tensor(values, device=logits.device), accumulate=True)


def _flat_index(row_tokens: Sequence[Tuple[int, Sequence[int]]], vocab: int, device):
    """[(row, token ids)] -> (rows, tokens) int64 tensors, dropping ids outside the vocab."""
    tokens = np.concatenate([np.asarray(t, dtype=np.int64) for _, t in row_tokens])
    rows = np.repeat(np.array([i for i, _ in row_tokens], dtype=np.int64), [len(t) for _, t in row_tokens])
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab):  # rare: masking costs 10x the check
        inside = (tokens >= 0) & (tokens < vocab)
        rows, tokens = rows[inside], tokens[inside]
    return torch.from_numpy(rows).to(device), torch.from_numpy(tokens).to(device)


def _per_row(rows: Sequence[SamplingRow], value_of, device) -> torch.Tensor:
    return torch.tensor([float(value_of(row.params)) for row in rows], dtype=torch.float32, device=device)


# ---- seeds --------------------------------------------------------------------------------

def row_seed(seed: int, step: int) -> int:
    """Generator seed for a seeded row's draw at `step` (= tokens generated so far).
    splitmix64 mixing keeps nearby (seed, step) pairs from giving related streams."""
    return _splitmix64(_splitmix64(seed & _MASK64) ^ step) >> 1  # 63 bits


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


# ---- logprobs (the scheduler formats them; these only compute numbers) ----------------

def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """[N, V] -> float32 log_softmax of the logits as they are (prompt tokens' logprobs)."""
    return torch.log_softmax(logits.float(), dim=-1)


def default_logprob_mode() -> str:
    """SGLang's convention: log_softmax(logits / temperature) ("scaled"), or the logits
    before temperature ("raw") when SGLANG_RETURN_ORIGINAL_LOGPROB is set true."""
    flag = os.environ.get("SGLANG_RETURN_ORIGINAL_LOGPROB", "")
    return "raw" if flag.strip().lower() in ("1", "true", "yes", "on") else "scaled"


def compute_sampling_logprobs(logits: torch.Tensor, rows: Sequence[SamplingRow],
                              vocab_size: int, default_mode: str = "scaled",
                              processor: Optional[Callable] = None) -> torch.Tensor:
    """[N, >=V] logits of sampled positions -> [N, V] float32 logprobs, per row's mode
    (row.params.logprob_mode, else `default_mode`), after logit_bias and penalties as
    SGLang computes them:
    * scaled: log_softmax(logits / temperature), before top_k/top_p/min_p;
    * raw: log_softmax(logits), temperature not applied;
    * sampling: log of the filtered distribution the token was drawn from (excluded
      tokens at float32's lowest value, not -inf, so that JSON can carry them).
    Greedy rows (temperature 0) are never scaled; in sampling mode their chosen token
    has logprob 0."""
    logits = apply_custom_processor(logits[:, :vocab_size].float(), rows, processor)
    logits = apply_penalties(logits, rows)
    modes = [row.params.logprob_mode or default_mode for row in rows]
    temps = torch.tensor([1.0 if row.params.is_greedy or mode == "raw" else row.params.temperature
                          for row, mode in zip(rows, modes)], dtype=torch.float32)
    out = torch.log_softmax(logits / temps.to(logits.device).unsqueeze(1), dim=-1)
    lowest = torch.finfo(torch.float32).min
    for i, (row, mode) in enumerate(zip(rows, modes)):
        if mode != "sampling":
            continue
        if row.params.is_greedy:
            out[i] = torch.full_like(out[i], lowest).index_fill_(0, logits[i].argmax(), 0.0)
        else:
            kept = filtered_probs(logits[i:i + 1], [row.params])[0]
            out[i] = torch.log(kept).clamp_(min=lowest)
    return out


def gather_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """[N, V], [N] -> [N]: each row's logprob of its token."""
    index = token_ids.to(device=logprobs.device, dtype=torch.int64).view(-1, 1)
    return logprobs.gather(1, index).squeeze(1)


def top_logprobs(logprobs: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[N, V] -> (values [N, k], token ids [N, k]), most likely first."""
    values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return values, ids
