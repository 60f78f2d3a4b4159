"""Constrained decoding in the scheduler: compiled grammars and each request's matcher.

A request whose sampling_params carry json_schema, regex or ebnf (SGLang's fields) gets a
GrammarState when it arrives. Its grammar is compiled on a worker thread (xgrammar releases
the GIL while it compiles), keyed by (kind, text), so that n samples, retries and RL groups
that share one schema compile it once. Until its grammar is ready the request stays in the
queue and the batch runs on without it (`admissible`).

Each step, before sampling, `fill_bitmask` asks every constrained row's matcher for the
tokens that may come next (xgrammar's int32 bitmask); kernels/grammar_mask.py applies it to
the logits on their device before penalties, temperature and top-k/p, so sampling and the
returned logprobs are both of the constrained distribution (as SGLang, which masks the
logits before its sampler computes logprobs). Every accepted token advances the matcher
(`accept`); the request stops (finish reason stop) when the grammar terminates, i.e. it has
accepted the end-of-sequence token after a complete match, and ends with an abort naming
the cause when no token can continue it. Retraction keeps output tokens and so keeps the
matcher; a restart after a weight update drops them and `replay` rebuilds it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from rollserve.kernels.grammar_mask import apply_token_bitmask

logger = logging.getLogger(__name__)

CACHE_ENTRIES = 512  # compiled grammars kept (least recently asked for goes first)
PARALLEL_FILL_ROWS = 8  # from this many constrained rows a step, masks are filled by threads
FILL_THREADS = min(8, (os.cpu_count() or 1) // 2)
DEAD_END = ("constrained decoding: no token can continue the {kind} grammar after "
            "{n} output tokens")


def grammar_error_message(e: Exception) -> str:
    """xgrammar's error text without its '[time] /path/file.cc:123: ' prefix."""
    text = str(e).strip()
    text = re.sub(r"^\[[\d:]+\]\s*\S+:\d+:\s*", "", text)
    text = re.sub(r"^Check failed: \(.*?\) is false:\s*", "", text)
    return text.splitlines()[0] if text else type(e).__name__


def compile_grammar(compiler, kind: str, text: str, any_whitespace: bool = True):
    """One grammar with an xgrammar GrammarCompiler; raises on a malformed one."""
    if kind == "json_schema":
        return compiler.compile_json_schema(text, any_whitespace=any_whitespace)
    if kind == "regex":
        return compiler.compile_regex(text)
    if kind == "ebnf":
        return compiler.compile_grammar(text)
    raise ValueError(f"unknown grammar kind {kind!r}")


@dataclass(eq=False)
class GrammarState:
    """One request's constraint: the compile it waits for, then its matcher."""

    kind: str
    compiled: Future
    matcher: object = None  # xgrammar.GrammarMatcher once the grammar is ready


class GrammarBackend:
    """The compile cache and the matchers' lifecycle (--grammar-backend xgrammar)."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_ids, async_compile: bool = True,
                 json_any_whitespace: bool = True):
        self.tokenizer = tokenizer
        # the bitmask must cover every logit column the sampler may pick from: the model's
        # vocabulary (lm_head rows) and the tokenizer's, whichever is larger
        self.vocab_size = max(int(vocab_size), len(tokenizer))
        self.stop_token_ids = sorted(int(t) for t in eos_token_ids)
        # tensor-parallel ranks must admit a request at the same step: they compile inline
        self.async_compile = async_compile
        self.json_any_whitespace = json_any_whitespace
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")
        self.cache: "OrderedDict[Tuple[str, str], Future]" = OrderedDict()
        self._compiler = None
        self._compiler_lock = threading.Lock()
        self._batch_filler = None  # xgrammar.BatchGrammarMatcher, made on first use
        self.pending: Dict[int, object] = {}  # id -> queued request still without a matcher

    # ---- compile cache ----------------------------------------------------------------------
    def compiler(self):
        """xgrammar's compiler over this tokenizer, built on first use (~0.2 s)."""
        with self._compiler_lock:
            if self._compiler is None:
                import xgrammar

                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_token_ids)
                self._compiler = xgrammar.GrammarCompiler(info, max_threads=2, cache_enabled=False)
            return self._compiler

    def _compile(self, kind: str, text: str):
        return compile_grammar(self.compiler(), kind, text, self.json_any_whitespace)

    def compiled(self, kind: str, text: str) -> Future:
        key = (kind, text)
        future = self.cache.get(key)
        if future is not None:
            self.cache.move_to_end(key)
            return future
        if self.async_compile:
            future = self.pool.submit(self._compile, kind, text)
        else:
            future = Future()
            try:
                future.set_result(self._compile(kind, text))
            except Exception as e:  # reported on the request, as an async failure would be
                future.set_exception(e)
        self.cache[key] = future
        while len(self.cache) > CACHE_ENTRIES:
            self.cache.popitem(last=False)
        return future

    # ---- requests waiting for their grammar -------------------------------------------------
    def attach(self, req) -> None:
        """A new request: start (or find) the compile of its grammar."""
        grammar = req.sampling_params.grammar
        if grammar is not None:
            req.grammar = GrammarState(grammar[0], self.compiled(*grammar))
            self.pending[id(req)] = req

    @staticmethod
    def admissible(req) -> bool:
        """Whether the request may be admitted: unconstrained, or its matcher is ready."""
        return req.grammar is None or req.grammar.matcher is not None

    def settle(self) -> List:
        """Gives a matcher to each queued request whose grammar is now compiled. Returns the
        requests whose grammar failed to compile, finished with an abort naming the error."""
        failed = []
        for key, req in list(self.pending.items()):
            state = req.grammar
            if req.finished:  # aborted while it waited
                del self.pending[key]
                continue
            if not state.compiled.done():
                continue
            del self.pending[key]
            error = state.compiled.exception()
            if error is not None:
                req.finish("abort", message=f"{state.kind}: {grammar_error_message(error)}")
                logger.info("request %s: its grammar did not compile: %s", req.rid,
                            req.finished_reason["message"])
                failed.append(req)
                continue
            self._new_matcher(req)
        return failed

    def _new_matcher(self, req) -> None:
        import xgrammar

        req.grammar.matcher = xgrammar.GrammarMatcher(req.grammar.compiled.result())
        for token in req.output_ids:  # a request that already has output (restart, replay)
            if not req.grammar.matcher.accept_token(token):
                req.finish("abort", message=f"constrained decoding: output token {token} "
                                            f"does not match the {req.grammar.kind} grammar")
                return

    def settle_queue(self, waiting, idle: bool, forget, weight_version: str) -> list:
        """One step's look at the queue: matchers for the compiled, the failed taken out
        (`forget` drops their queued KV) and their outputs returned. When nothing runs and
        every queued request waits for a compile, waits a little for one (no busy loop)."""
        if not self.pending:
            return []
        failed = self.settle()
        for req in failed:
            waiting.remove(req)
            forget(req)
        if idle and self.pending and not any(self.admissible(r) for r in waiting):
            # nothing else to run: wait a little for a compile instead of spinning the loop
            wait_futures([r.grammar.compiled for r in self.pending.values()], timeout=0.01,
                         return_when="FIRST_COMPLETED")
        return [req.take_output(weight_version) for req in failed]

    def replay(self, req) -> None:
        """The request's output was rewritten (a restart drops it): rebuild its matcher from
        the grammar and the tokens it now has."""
        if req.grammar is not None and req.grammar.matcher is not None:
            self._new_matcher(req)

    # ---- each step ----------------------------------------------------------------------------
    def fill_bitmask(self, reqs: Sequence) -> Optional[Tuple[torch.Tensor, List[int]]]:
        """Bitmask [len(reqs), W] (host, int32) and the rows to apply it to, or None when no
        request is constrained. A request no token can continue is finished here (its row is
        then left unmasked: what it samples is dropped)."""
        rows = [i for i, req in enumerate(reqs) if req.grammar is not None
                and req.grammar.matcher is not None and not req.finished]
        if not rows:
            return None
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(len(reqs), self.vocab_size)
        if len(rows) >= PARALLEL_FILL_ROWS and FILL_THREADS > 1:
            # a row inside a free-form string costs up to milliseconds: spread the rows over
            # threads (xgrammar fills without the GIL)
            if self._batch_filler is None:
                self._batch_filler = xgrammar.BatchGrammarMatcher(max_threads=FILL_THREADS)
            self._batch_filler.batch_fill_next_token_bitmask(
                [reqs[i].grammar.matcher for i in rows], bitmask, indices=rows)
        else:
            for i in rows:
                reqs[i].grammar.matcher.fill_next_token_bitmask(bitmask, i)
        alive = bitmask[rows].ne(0).any(dim=1).tolist()
        for i, ok in zip(rows, alive):
            if not ok:
                req = reqs[i]
                req.finish("abort", message=DEAD_END.format(kind=req.grammar.kind,
                                                            n=len(req.output_ids)))
        return bitmask, [i for i, ok in zip(rows, alive) if ok]

    def constrain(self, logits: torch.Tensor, reqs: Sequence) -> torch.Tensor:
        """Logits [len(reqs), V] -> a float32 copy with each constrained row masked (or
        `logits` itself when no row is constrained)."""
        filled = self.fill_bitmask(reqs)
        if filled is None or not filled[1]:
            return logits
        bitmask, rows = filled
        masked = logits.to(torch.float32, copy=True)
        apply_token_bitmask(masked, bitmask, rows)
        return masked

    @staticmethod
    def accept(req, token: int) -> bool:
        """Advances the request's matcher by its new token. False (and the request finished)
        when the grammar refuses it, which happens only when another setting (min_new_tokens
        blocking the end-of-sequence token, a custom logit processor) left no allowed token."""
        state = req.grammar
        if state is None or state.matcher is None:
            return True
        if not state.matcher.accept_token(token):
            req.finish("abort", message=f"constrained decoding: token {token} is not allowed by "
                                        f"the {state.kind} grammar (no allowed token was left "
                                        "after the other sampling settings)")
            return False
        if state.matcher.is_terminated():  # a complete match, then end-of-sequence
            req.finish("stop", matched=token)
        return True

def make_grammar_backend(config, tokenizer, runner, eos_token_ids) -> Optional[GrammarBackend]:
    """--grammar-backend: xgrammar (the default) or none (no constraints; the front end
    refuses requests that ask for one). None too for a pooling model (nothing is sampled)."""
    if config.grammar_backend == "none" or tokenizer is None or runner.pooling is not None:
        return None
    return GrammarBackend(tokenizer, runner.vocab_size, eos_token_ids,
                          async_compile=config.executor.tp_size == 1,
                          json_any_whitespace=config.json_any_whitespace)
