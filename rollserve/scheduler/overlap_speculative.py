"""Speculative decoding under the overlap scheduler: step i+1's verify forward is launched
before the host finishes step i, so the host work that does not decide step i+1's inputs
runs while the GPU computes it.

Step i+1's drafts depend on how many tokens step i accepted (NGRAM looks up the context it
committed; a draft model catches up on the kept tokens and chains from the last one), so
each step() splits step i's processing in two:

1. settle (before step i+1 is built): wait for step i's verify, commit the accepted tokens
   through the per-token path (stop ids and strings, max_new_tokens, logprobs, weight-version
   spans, a grammar's matcher), free the rejected drafts' KV, move finished requests out of
   the running set, let the draft model catch up and chain;
2. finish (after step i+1 is launched, beside its forward): the outputs of step i (streamed
   chunks and finished requests, with their logprobs, for the detokenizer), releasing the
   finished requests' KV (their radix-cache insert) and the step's stats.

Releasing a finished request's KV changes what the pool has free, which the next batch's
drafts (cut to the room), admissions and chunk sizes read. So the release is deferred only
when the next batch cannot depend on it: nothing waits or is half prefilled, and every
running request has room for a full draft. Otherwise step i is finished before step i+1 is
built (the non-overlap order). The batches are then always those the non-overlap
SpeculativeScheduler builds, and the outputs the same.

SGLang's spec v2 (SGLANG_ENABLE_SPEC_V2, EAGLE chains only) goes further: the draft model's
next chain stays on the GPU and step i+1's inputs are resolved there, with KV reserved for
the longest chain. Here drafting stays on the host side of the step boundary, which keeps
NGRAM, trees (--speculative-eagle-topk > 1), TP's broadcast drafts and exact KV accounting
as they are; what overlaps is the host's per-step bookkeeping.

Control calls (weight updates, flushes, pauses) drain the pipeline first (drain()), so they
run between steps as without overlap.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from rollserve.core.batch import ScheduleBatch
from rollserve.core.io import TokenOutput
from rollserve.executor.model_runner import ForwardOutput
from rollserve.scheduler.model_drafter import ModelDrafter
from rollserve.scheduler.request import Req
from rollserve.scheduler.speculative import SpeculativeScheduler


class OverlapSpeculativeScheduler(SpeculativeScheduler):
    def __init__(self, config, runner, tokenizer, eos_token_ids):
        super().__init__(config, runner, tokenizer, eos_token_ids)
        self.in_flight: Optional[Tuple[ScheduleBatch, ForwardOutput]] = None
        self._settling = False  # _after_step keeps outputs and releases for finish()
        self._ended: List[Req] = []  # finished in the step being settled, KV still held
        self._streaming: List[Req] = []  # settled requests that may owe a streamed chunk
        self.overlapped_steps = 0  # steps launched before the previous one was finished
        self.deferred_releases = 0  # finished requests released beside the next forward

    def has_work(self) -> bool:
        return self.in_flight is not None or super().has_work()

    def step(self) -> List[TokenOutput]:
        settled = self._settle()
        outputs = self._begin_step()
        if settled is not None and self._ended and not self._may_defer_release():
            outputs.extend(self._finish(settled))
            settled = None
        batch = self._build_batch()
        outputs.extend(self.stats.drain_pending())
        if batch is not None:
            self.in_flight = (batch, self.runner.forward(batch))  # queued: the GPU runs it now
            if settled is not None:
                self.overlapped_steps += 1
        if settled is not None:
            outputs.extend(self._finish(settled))
        return outputs

    def info(self) -> dict:
        return {**super().info(), "num_overlapped_steps": self.overlapped_steps}

    def drain(self) -> List[TokenOutput]:
        """Processes the step in flight, if any, to the end (waits for its GPU work)."""
        settled = self._settle()
        if isinstance(self.drafter, ModelDrafter):  # DP attention: every rank drains here alike
            self.drafter.settle_draft_forwards()
        return self._finish(settled) if settled is not None else []

    def end_dp_step(self) -> None:
        """DP attention: this step's drafts run when it settles, in the next step or a drain
        (executor/draft_lockstep.py), not at its end."""

    def _settle(self) -> Optional[ScheduleBatch]:
        """Commits the step in flight (part 1 above); None when there was none."""
        if self.in_flight is None:
            return None
        (batch, result), self.in_flight = self.in_flight, None
        self._settling = True
        try:
            # no outputs come back while settling: _after_step holds them for finish()
            self._process_result(batch, result)
        finally:
            self._settling = False
        return batch

    def _finish(self, batch: ScheduleBatch) -> List[TokenOutput]:
        """Outputs, releases and stats of a settled step (part 2 above)."""
        outputs: List[TokenOutput] = []
        ended, self._ended = self._ended, []
        streaming, self._streaming = self._streaming, []
        if self.in_flight is not None:
            self.deferred_releases += len(ended)
        for req in ended:
            self.kv.release(req)
            outputs.append(req.take_output(self.weight_version))
        for req in streaming:
            if not req.finished and self._stream_due(req):
                outputs.append(req.take_output(self.weight_version))
        self.stats.record_step(batch)
        return outputs

    def _may_defer_release(self) -> bool:
        """Whether the next batch is the same with the ended requests' KV still held: no
        admission or prefill chunk reads the free slots, and no draft is cut for room."""
        if self.waiting or self.prefilling is not None:
            return False
        return self.kv.available_slots() >= len(self.running) * self.config.speculative_num_draft_tokens

    def _after_step(self, req: Req, prompt_done: bool, outputs: List[TokenOutput]) -> None:
        if not self._settling:
            super()._after_step(req, prompt_done, outputs)
        elif req.finished:
            if req is self.prefilling or req in self.running:
                self._remove_active(req)  # out of the next batch now; released by _finish
            self._ended.append(req)
        else:
            # the state changes now (a finished prompt joins the running set, a chunk is
            # cached); the streamed chunk waits for _finish
            super()._after_step(req, prompt_done, outputs)
            if req.stream:
                self._streaming.append(req)

    def _stream_due(self, req: Req) -> bool:
        return not self._settling and super()._stream_due(req)
