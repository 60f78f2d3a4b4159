"""Jump-forward decoding: tokens a request's grammar forces are appended without sampling.

When a constrained request's grammar admits only one continuation for a while (the fixed
keys of a JSON schema, a regex literal), xgrammar's `find_jump_forward_string` names it.
Before each decode step the scheduler asks this module for every running constrained
request: the forced text is tokenized, the tokens are committed to the request at once
(stop ids and strings, max_new_tokens and provenance as for sampled tokens), and the
request's decode entry carries them after its newest token, so one forward computes their
KV (an extend over the paged cache, as a speculative verify does) and samples the token
after them. SGLang's behaviour (--disable-jump-forward, off by default); SGLang turns it
off under the overlap scheduler, and so does rollserve (and while speculating, whose
decode entries are its own).

Token boundaries. The forced text is tokenized together with the text of the request's
last few tokens, so that byte-pair merges across the border come out as the tokenizer
would make them; if that would change a token whose KV is already computed, nothing
jumps this step (SGLang retokenizes likewise and backs off). The newest token (its KV is
computed by this very entry) may be replaced by a longer one ("sh" + forced "ipped" ->
"shipped") unless it was already streamed out or its logprob already recorded. The last
token of the forced text is held back: the model samples it itself, so that it can merge
with the free text after it (JSON's `name"` then `:` -> the single token `":`). Every
forced token is accepted by the grammar's matcher first (on a fork, which replaces the
matcher only when all are accepted).

Logprobs: as SGLang (which recomputes jumped tokens in an extend and reports their input
logprobs as output logprobs), a forced token's output logprob is the model's own at its
position -- the request's logprob convention (temperature, penalties), without the
grammar's mask; a sampled token's logprob is of the masked distribution
(scheduler/grammar.py). Greedy output equals the output without jump-forward whenever the
model's greedy choice inside a forced run is the tokenizer's own tokenization of it; a
model that would have spelled the forced text with other tokens continues differently.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch

from rollserve.core.batch import BatchEntry
from rollserve.executor.sampler import SamplingRow, compute_sampling_logprobs
from rollserve.scheduler import weight_versions
from rollserve.scheduler.input_logprobs import record_output_extras

logger = logging.getLogger(__name__)

WINDOW = 3  # tokens re-read before the forced text: enough context for the merges at the border


def retokenize(tokenizer, output_ids: List[int], forced: str,
               may_replace_last: bool) -> Optional[Tuple[Optional[int], List[int]]]:
    """(the newest token's replacement or None, the tokens to force after it), or None when
    the forced text cannot be tokenized without changing tokens already computed."""
    window = output_ids[-WINDOW:]
    head = tokenizer.decode(window, clean_up_tokenization_spaces=False)
    if "\ufffd" in head:  # a character split over tokens: its text does not round-trip
        return None
    ids = tokenizer.encode(head + forced, add_special_tokens=False)
    keep = len(window) - 1 if may_replace_last else len(window)
    if ids[:keep] != window[:keep] or len(ids) <= len(window):
        return None
    replaced = ids[len(window) - 1] if ids[len(window) - 1] != window[-1] else None
    if replaced is not None and not may_replace_last:
        return None
    tail = ids[len(window):-1]  # the forced text's last token is the model's to choose
    if not tail and replaced is None:
        return None
    return replaced, tail


class JumpForward:
    """Finds, commits and accounts for grammar-forced tokens of one scheduler."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.tokenizer = scheduler.stop_checker.tokenizer
        self.forced: Dict[int, List[int]] = {}  # id(req) -> tokens forced for this step's entry
        self.jumps = 0  # requests that jumped, summed over steps
        self.tokens = 0  # tokens appended without a decode step of their own
        scheduler.stats.sources.append(self)  # /get_server_info shows the counters

    def snapshot(self) -> dict:
        return {"jump_forward_ct_total": self.jumps, "jump_forward_tokens_total": self.tokens}

    # ---- before a decode step --------------------------------------------------------------
    def decode_entries(self, reqs: List) -> Optional[List[BatchEntry]]:
        """The decode entries of `reqs` when any of them jumps (each carrying its forced
        tokens), else None: the scheduler builds its usual one-token entries."""
        sched = self.scheduler
        spare = sched.kv.available_slots() - len(reqs)  # one slot each is the decode's own
        self.forced.clear()
        for req in reqs:
            if spare <= 0:
                break
            if req.grammar is not None and req.grammar.matcher is not None and not req.finished:
                spare -= self._jump(req, spare)
        if not self.forced:
            return None
        # a request that ended on a forced token needs no KV for it (nothing comes after)
        sizes = [req.seq_len - req.kv_len - (req.finished and id(req) in self.forced)
                 for req in reqs]
        slots = sched.kv.alloc_slots(sum(sizes))
        entries, offset = [], 0
        for req, n in zip(reqs, sizes):
            if n == 0:  # it ended on its newest token's replacement: released next step
                continue
            own = slots[offset:offset + n]
            offset += n
            rows = list(range(n)) if id(req) in self.forced and req.return_logprob else [n - 1]
            entries.append(BatchEntry(req, req.kv_len, req.fill_ids[req.kv_len:req.kv_len + n],
                                      own, sample=not req.finished, logit_rows=rows,
                                      is_decode=True))
            sched.kv.append_slots(req, own)
        return entries

    def _jump(self, req, room: int) -> int:
        """Commits the tokens the request's grammar forces now (at most `room`); returns how
        many output tokens it added."""
        matcher = req.grammar.matcher
        forced = matcher.find_jump_forward_string()
        if not forced:
            return 0
        may_replace = (len(req.output_ids) > req.sent_output_len and not req.return_logprob)
        got = retokenize(self.tokenizer, req.output_ids, forced, may_replace)
        if got is None:
            return 0
        replaced, tokens = got
        most = min(room, req.remaining_new_tokens,
                   self.scheduler.runner.context_len - req.seq_len)
        tokens = tokens[:max(0, most)]
        if not tokens and replaced is None:
            return 0
        fork = matcher.fork()
        if replaced is not None:
            fork.rollback(1)
        for token in ([replaced] if replaced is not None else []) + tokens:
            if not fork.accept_token(token):
                logger.debug("request %s: jump-forward token %d refused by the grammar", req.rid,
                             token)
                return 0
        req.grammar.matcher = fork
        if replaced is not None:
            req.output_ids[-1] = replaced
            self.scheduler.stop_checker.check(req)  # its text may complete a stop string
        committed = [] if req.finished else self._commit(req, tokens)
        self.forced[id(req)] = committed
        self.jumps += 1
        self.tokens += len(committed)
        self.scheduler.stats.generation_tokens += len(committed)
        return len(committed)

    def _commit(self, req, tokens: List[int]) -> List[int]:
        """Appends forced tokens as sampled ones are appended; stops where the request ends."""
        sched = self.scheduler
        committed = []
        for token in tokens:
            req.output_ids.append(token)
            weight_versions.record_token(req, sched.weight_version, sched.kv.epoch)
            committed.append(token)
            sched.stop_checker.check(req)
            if req.finished:
                break
        return committed

    # ---- after the forward -------------------------------------------------------------------
    def record_logprobs(self, entry: BatchEntry, logits: torch.Tensor, first_row: int) -> None:
        """The output logprobs of the tokens forced into `entry` (its logit rows from
        `first_row` on), in order, before the token sampled after them."""
        req = entry.req
        tokens = self.forced.pop(id(req), None)
        if not tokens or not req.return_logprob:
            return
        logits = logits[first_row:first_row + len(tokens)]
        sched = self.scheduler
        first = len(req.output_ids) - len(tokens)  # output index of the first forced token
        rows = [SamplingRow(req.sampling_params, req.input_ids, req.output_ids[:first + k],
                            sched.eos_token_ids) for k in range(len(tokens))]
        logprobs = compute_sampling_logprobs(logits[:len(tokens)], rows, sched.sampler.vocab_size,
                                             sched.logprob_mode, sched.sampler.logit_processor)
        index = torch.tensor(tokens, device=logprobs.device).view(-1, 1)
        values = logprobs.gather(1, index).squeeze(1).tolist()
        req.pending_output_logprobs.extend(zip(values, tokens))
        record_output_extras(req, logprobs)


def make_jump_forward(scheduler, config) -> Optional[JumpForward]:
    """On when a grammar backend runs and --disable-jump-forward is not given."""
    if scheduler.grammar is None or config.disable_jump_forward:
        return None
    return JumpForward(scheduler)
