"""Overlap scheduling: the CPU builds and launches step i+1 while the GPU still runs step i,
then processes step i's results (stop checks, outputs, radix-cache inserts).

Step i+1's decode inputs are the tokens step i is still sampling: each decode entry
names its request's slot in `runner.future_tokens` (a placeholder id), which the
sampling of step i fills on the GPU before step i+1 reads it (same stream). The
cost: a request that finishes at step i has already been given one more decode in
step i+1, whose result is dropped (its KV slot is freed with the request).

The pipeline drains (step i is processed before step i+1 is built) whenever the
next batch depends on step i's tokens on the host: penalties, per-request seeds and
min_new_tokens read the output so far, and retraction needs settled requests. Control
calls (weight updates, cache flushes) drain it too, so they always run between steps.

With --speculative-algorithm the overlap is scheduler/overlap_speculative.py's: the next
drafts need this step's accepted tokens, so the commit comes before the next launch and the
rest of the step's processing (outputs, releases, stats) overlaps the next verify forward.

Under --enable-dp-attention every rank still runs one forward per step (scheduler/dp_attention.py
shares who has work before it): a rank with no batch launches its idle pass through the MoE
exchanges before it processes its step in flight, so the ranks that launched wait on none of
its host work. Draining stays per rank: it runs no collective, so ranks drain at different
steps (penalties, retraction) without leaving one waiting in an exchange.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Set

import torch

from rollserve.executor.forward_batch import placeholder_for
from rollserve.core.io import TokenOutput
from rollserve.executor.model_runner import ForwardOutput, ModelRunner
from rollserve.executor.parallel_state import dp_attention
from rollserve.scheduler.request import Req
from rollserve.core.batch import ScheduleBatch
from rollserve.scheduler.config import SchedulerConfig
from rollserve.scheduler.scheduler import LaunchedSampling, Scheduler
from rollserve.scheduler.speculative import SpeculativeScheduler
from rollserve.scheduler.overlap_speculative import OverlapSpeculativeScheduler
from rollserve.kernels.dispatch import host_to_device


@dataclass
class InFlight:
    batch: ScheduleBatch
    result: ForwardOutput
    sampling: Optional[LaunchedSampling]  # None until launched (after a grammar's accept)
    sampled_reqs: Set[int]  # id() of each request whose next token is being sampled


def output_dependent(req: Req) -> bool:
    """Whether sampling the request's next token needs its latest token on the host."""
    p = req.sampling_params
    return (p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
            or p.seed is not None or len(req.output_ids) + 1 == p.min_new_tokens)


class OverlapScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.in_flight: Optional[InFlight] = None
        self.jump_forward = None  # as SGLang: off when overlapping (the next input is in flight)
        self._resolved: dict = {}  # the step being processed: entry index -> (token, logprobs)
        self.overlapped_steps = 0  # steps launched before the previous one was processed
        self.dp_attention = dp_attention()  # every step takes part in one forward (idle or not)

    def has_work(self) -> bool:
        return self.in_flight is not None or super().has_work()

    def step(self) -> List[TokenOutput]:
        outputs = self._begin_step()
        if self.in_flight is not None and not self._can_overlap():
            outputs.extend(self.drain())
        batch = self._build_batch()
        outputs.extend(self.stats.drain_pending())
        # a grammar's mask needs step i's token accepted: the forward of step i+1 still
        # overlaps step i's processing, its sampling waits for it (scheduler/grammar.py)
        deferred = batch is not None and self.grammar is not None and any(
            e.sample and e.req.grammar is not None for e in batch.entries)
        launched = self._launch(batch, sample=not deferred) if batch is not None else None
        if launched is None and self.dp_attention:
            self.runner.idle_forward()  # before the drain: the others' exchanges wait for it
        elif launched is not None and self.in_flight is not None:
            self.overlapped_steps += 1
        outputs.extend(self.drain())
        if deferred:
            self._launch_sample(launched)
        self.in_flight = launched
        return outputs

    def drain(self) -> List[TokenOutput]:
        """Processes the step in flight, if any (waits for its GPU work)."""
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return []
        self._resolved = in_flight.sampling.resolve()
        outputs = self._process_result(in_flight.batch, in_flight.result)
        self.stats.record_step(in_flight.batch)
        return outputs

    def info(self) -> dict:
        return {**super().info(), "num_overlapped_steps": self.overlapped_steps}

    def _can_overlap(self) -> bool:
        pending = self.in_flight.sampled_reqs
        if any(id(r) in pending and output_dependent(r) for r in self.running):
            return False
        return self.kv.available_slots() >= len(self.running)  # no retraction this step

    def _launch(self, batch: ScheduleBatch, sample: bool = True) -> InFlight:
        result = self.runner.forward(batch)  # a generation model: make_scheduler says so
        launched = InFlight(batch, result, None, set())
        if sample:
            self._launch_sample(launched)
        return launched

    def _launch_sample(self, launched: InFlight) -> None:
        sampling = self._launch_sampling(launched.batch, launched.result)
        if sampling.picks:
            rows = torch.tensor([e.req.req_pool_idx for _, e in sampling.picks], dtype=torch.int64)
            self.runner.future_tokens[host_to_device(rows, self.runner.device)] = sampling.next_ids
        launched.sampling = sampling
        launched.sampled_reqs = {id(e.req) for _, e in sampling.picks}

    def _sample(self, batch: ScheduleBatch, result: ForwardOutput):
        return self._resolved  # sampled at launch, resolved by drain()

    def _decoding_requests(self) -> List[Req]:
        pending = self.in_flight.sampled_reqs if self.in_flight is not None else set()
        return [r for r in self.running if not (id(r) in pending and self._finishes_by_length(r))]

    def _decode_input(self, req: Req) -> int:
        return placeholder_for(req.req_pool_idx)  # the token step i is still sampling

    def _finishes_by_length(self, req: Req) -> bool:
        """The token in flight will end the request by length: no point decoding after it."""
        return (len(req.output_ids) + 1 >= req.sampling_params.max_new_tokens
                or req.seq_len + 1 >= self.runner.context_len)

    def _after_step(self, req: Req, prompt_done: bool, outputs: List[TokenOutput]) -> None:
        if req.finished and req.req_pool_idx is None:
            return  # finished and released while this step was in flight
        super()._after_step(req, prompt_done, outputs)


def make_scheduler(config: SchedulerConfig, runner: ModelRunner, tokenizer, eos_token_ids) -> Scheduler:
    """The overlap scheduler on CUDA (unless --disable-overlap-schedule), else the plain one;
    with --speculative-algorithm the speculative one, overlapped the same way
    (scheduler/overlap_speculative.py). ROLLSERVE_OVERLAP_ON_CPU=1 overlaps on CPU too: its
    steps do not run concurrently there, but every bookkeeping path and DP attention's
    lock-step are the GPU's, which multi-process tests check without a GPU."""
    on_device = runner.device.type == "cuda" or os.environ.get("ROLLSERVE_OVERLAP_ON_CPU") == "1"
    overlap = on_device and not config.disable_overlap_schedule and runner.pooling is None
    if config.speculative_algorithm is not None and runner.pooling is None:
        cls = OverlapSpeculativeScheduler if overlap else SpeculativeScheduler
    else:
        cls = OverlapScheduler if overlap else Scheduler
    return cls(config, runner, tokenizer, eos_token_ids)
