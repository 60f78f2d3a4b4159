"""Continuous batching: which requests run in the next forward step.

Each step builds one batch holding a decode token for every running request
plus prefill chunks of waiting requests (chunked prefill keeps a long prompt
from stalling the decodes). No tensor math here beyond bookkeeping.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Deque, Dict, List, Optional, Tuple

import torch

from rollserve.scheduler.config import SchedulerConfig
from rollserve.core.io import TokenizedEmbeddingReq, TokenizedGenerateReq, TokenOutput
from rollserve.scheduler.admission import NewTokenRatio, decode_reserve, expected_new_tokens
from rollserve.scheduler.kv_manager import KVManager
from rollserve.scheduler.retraction import decode_steps_need, pick_and_retract
from rollserve.executor.model_runner import ForwardOutput, ModelRunner
from rollserve.scheduler.policy import SchedulePolicy
from rollserve.scheduler.output_modes import GenerationOutputs, OutputMode
from rollserve.scheduler.pooler import EmbeddingReq, Pooler
from rollserve.scheduler.request import Req
from rollserve.executor.sampler import (Sampler, SamplingRow, compute_sampling_logprobs,
                                      default_logprob_mode, load_logit_processor)
from rollserve.scheduler.input_logprobs import (clear_input_logprobs, record_input_logprobs,
                                                record_output_extras)
from rollserve.scheduler.jump_forward import make_jump_forward
from rollserve.core.batch import BatchEntry, ScheduleBatch
from rollserve.scheduler.stats import SchedulerStats
from rollserve.scheduler.stop_checker import StopChecker
from rollserve.scheduler import weight_versions
from rollserve.scheduler.deterministic import with_default_seed
from rollserve.scheduler.grammar import make_grammar_backend
from rollserve.kernels.dispatch import HostCopy, host_to_device

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, config: SchedulerConfig, runner: ModelRunner, tokenizer, eos_token_ids):
        self.config = config
        self.runner = runner
        self.pooler = Pooler.for_runner(runner)  # embedding / reward models; None for generation
        self.outputs: OutputMode = self.pooler or GenerationOutputs()
        use_cache = not config.disable_radix_cache and self.outputs.allows_prefix_cache
        self.kv = KVManager(runner.allocator, runner.req_pool, use_cache, runner.routed_experts)
        # seeded like the sampler: tensor-parallel ranks must shuffle ("random") alike
        self.policy = SchedulePolicy(config.schedule_policy, self.kv.tree,
                                     random.Random(config.random_seed))
        self.sampler = Sampler(runner.vocab_size, runner.device, base_seed=config.random_seed,
                               logit_processor=load_logit_processor(config.custom_logit_processor))
        self.logprob_mode = default_logprob_mode()
        self.eos_token_ids = frozenset(eos_token_ids)
        self.stop_checker = StopChecker(tokenizer, self.eos_token_ids, runner.context_len)
        chunk = config.chunked_prefill_size
        if chunk is None:
            chunk = 8192 if runner.device.type == "cuda" else 2048
        no_chunks = chunk == -1 or not self.outputs.allows_chunking
        self.chunk_size = None if no_chunks else chunk
        # share of each running request's remaining max_new_tokens kept free for its decode
        self.new_token_ratio = NewTokenRatio(config.schedule_conservativeness)
        self.waiting: Deque[Req] = deque()
        self.running: List[Req] = []
        self.prefilling: Optional[Req] = None  # the request whose prompt is half done
        self.weight_version = config.weight_version
        self.stats = SchedulerStats(config.decode_log_interval, config.speculative_algorithm is not None)
        # constrained decoding (scheduler/grammar.py); None: --grammar-backend none, or pooling
        self.grammar = make_grammar_backend(config, tokenizer, runner, self.eos_token_ids)
        self.jump_forward = make_jump_forward(self, config)  # scheduler/jump_forward.py; or None

    # ---- requests in ---------------------------------------------------------------
    def add_request(self, msg: TokenizedGenerateReq | TokenizedEmbeddingReq) -> None:
        cls = EmbeddingReq if isinstance(msg, TokenizedEmbeddingReq) else Req
        req = cls.from_message(msg)
        if self.config.executor.enable_deterministic_inference and cls is Req:
            req.sampling_params = with_default_seed(req.sampling_params, req.rid,
                                                    self.config.random_seed)
        if self.grammar is not None and cls is Req:
            self.grammar.attach(req)  # compiles on a worker thread; the request waits queued
        self.waiting.append(req)

    def abort(self, rid: Optional[str], abort_all: bool = False) -> List[TokenOutput]:
        """Abort queued requests now; running ones are marked and released next step."""
        def hit(req: Req) -> bool:
            return abort_hits(req.rid, rid, abort_all)

        outputs = []
        for req in [r for r in self.waiting if hit(r)]:
            self.waiting.remove(req)
            self.kv.forget_queued(req)
            req.finish("abort", message="aborted by request")
            outputs.append(req.take_output(self.weight_version))
        for req in self._active():
            if hit(req):
                req.finish("abort", message="aborted by request")
        return outputs

    def drain(self) -> List[TokenOutput]:
        """Finishes any step still in flight (the overlap scheduler's); nothing to do here."""
        return []

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def num_requests(self) -> int:
        return len(self.waiting) + len(self._active())

    def _active(self) -> List[Req]:
        return self.running + ([self.prefilling] if self.prefilling else [])

    # ---- one step ----------------------------------------------------------------------
    def step(self) -> List[TokenOutput]:
        """Run one forward over the next batch; return the outputs to send."""
        outputs = self._begin_step()
        batch = self._build_batch()
        outputs.extend(self.stats.drain_pending())
        if batch is None:
            return outputs
        result = self.runner.forward(batch)
        outputs.extend(self._process_result(batch, result))
        self.stats.record_step(batch)
        return outputs

    def _begin_step(self) -> List[TokenOutput]:
        outputs = self._release_aborted()
        if self.grammar is not None:  # queued requests whose grammar compiled (or failed)
            outputs += self.grammar.settle_queue(self.waiting, not self._active(),
                                                 self.kv.forget_queued, self.weight_version)
        return outputs

    def _release_aborted(self) -> List[TokenOutput]:
        outputs = []
        for req in [r for r in self._active() if r.finished]:
            self._remove_active(req)
            self.kv.release(req)
            outputs.append(req.take_output(self.weight_version))
        return outputs

    def _remove_active(self, req: Req) -> None:
        if req is self.prefilling:
            self.prefilling = None
        else:
            self.running.remove(req)

    # ---- batch building -----------------------------------------------------------------
    def _build_batch(self) -> Optional[ScheduleBatch]:
        entries = self._decode_entries()
        entries.extend(self._prefill_entries())
        return ScheduleBatch(entries) if entries else None

    def _decode_entries(self) -> List[BatchEntry]:
        self._ensure_decode_slots()
        reqs = self._decoding_requests()
        if not reqs:
            return []
        jumped = self.jump_forward.decode_entries(reqs) if self.jump_forward else None
        if jumped is not None:  # grammar-forced tokens ride in the entries
            return jumped
        slots = self.kv.alloc_slots(len(reqs))
        entries = [BatchEntry(req, req.kv_len, [self._decode_input(req)], slot, sample=True,
                              logit_rows=[0], is_decode=True)
                   for req, slot in zip(reqs, slots.split(1))]
        self.kv.append_one_slot_each(reqs, slots)
        return entries

    def _decoding_requests(self) -> List[Req]:
        return list(self.running)

    def _decode_input(self, req: Req) -> int:
        """The token a decode step feeds: the request's newest one."""
        return req.fill_ids[-1]

    def _ensure_decode_slots(self) -> None:
        """Every running request needs a slot for its next token. When the pool is short,
        retracted requests' cached KV gives way first, then the cheapest running requests
        are retracted, enough at once to run a while (scheduler/retraction.py)."""
        if not self.running:
            return
        if self.kv.available_slots() >= len(self.running):
            self.new_token_ratio.decode_step()
            return
        self.kv.unlock_queued()
        if self.kv.available_slots() >= len(self.running):
            return
        old_ratio = self.new_token_ratio.value
        retracted = pick_and_retract(self.running, self.kv.available_slots, self._retract)
        if retracted:
            self.waiting.extendleft(retracted)  # back first, the one with most work at the front
            self.kv.lock_queued(reversed(retracted), sum(map(decode_steps_need, self.running)))
            self.new_token_ratio.retracted(self.running)
            self.stats.num_retracted_reqs += len(retracted)
            logger.info("KV cache pool is full. Retract requests. #retracted_reqs: %d, "
                        "#new_token_ratio: %.4f -> %.4f", len(retracted), old_ratio,
                        self.new_token_ratio.value)
        if self.kv.available_slots() < len(self.running):  # one request left, and no room for it
            req = self.running.pop()
            req.finish("abort", message="the KV cache is too small for this request")
            self.kv.release(req)
            self.stats.pending_outputs.append(req.take_output(self.weight_version))

    def _retract(self, req: Req) -> None:
        self.running.remove(req)
        self.kv.retract_to_cache(req)

    def _prefill_entries(self) -> List[BatchEntry]:
        if self.prefilling is None and (not self.waiting or
                                        len(self.running) >= self.runner.max_running_requests):
            return []  # nothing to admit: skip the reserve's walk over the running requests
        budget = self.config.max_prefill_tokens
        if self.chunk_size:
            budget = min(budget, self.chunk_size)
        # decode slots of this step are already allocated; keep room for later decodes
        ratio = self.new_token_ratio.value
        free = self.kv.available_slots() - decode_reserve(self.running, ratio)
        entries = []
        if self.prefilling is not None:
            entry = self._prefill_chunk(self.prefilling, budget, free)
            if entry is None:
                return []
            entries.append(entry)
            budget -= len(entry.tokens)
            free -= len(entry.tokens)
            if not entry.completes_prompt:
                return entries
            free -= expected_new_tokens(self.prefilling, ratio)
        order = self.policy.order(list(self.waiting))
        if self.grammar is not None and self.grammar.pending:  # still compiling: waits its turn
            order = [req for req in order if self.grammar.admissible(req)]
        for req in order:
            if budget <= 0 or len(self.running) + len(entries) >= self.runner.max_running_requests:
                break
            idle = not self.running and not entries
            reserve = 0 if idle else expected_new_tokens(req, ratio)
            if free - reserve <= 0 and not idle:
                break
            before = self.kv.available_slots()
            if not self.kv.admit(req):
                break
            free -= before - self.kv.available_slots()  # a matched prefix it locked is no longer evictable
            # admission stops before the pool would run out: the whole prompt must fit too
            fits = idle or req.seq_len - req.kv_len + reserve <= free
            entry = self._prefill_chunk(req, budget, free - reserve) if fits else None
            if entry is None:
                self.kv.retract(req)
                break
            self.kv.admitted(req)
            self.waiting.remove(req)
            entries.append(entry)
            budget -= len(entry.tokens)
            free -= len(entry.tokens) + reserve
            if not entry.completes_prompt:
                self.prefilling = req  # partial prompt: the next step continues it
                break
        return entries

    def _prefill_chunk(self, req: Req, budget: int, free: int) -> Optional[BatchEntry]:
        """The next run of the request's prompt that fits the budgets; None if none fits."""
        remaining = req.seq_len - req.kv_len
        n = min(remaining, budget, free)
        if n < remaining and not self.chunk_size and budget < remaining:
            n = min(remaining, free)  # chunking disabled: the whole prompt or nothing
        if n <= 0:
            return None
        if n < remaining and not self.outputs.allows_chunking:
            return None  # an encoder's input runs whole, in one forward
        slots = self.kv.alloc_slots(n)
        if slots is None:
            return None
        start = req.kv_len
        tokens = req.fill_ids[start:start + n]
        self.kv.append_slots(req, slots)
        done = start + n == req.seq_len
        rows = self.outputs.rows(req, start, n)
        sample = done and req.sampling_params.max_new_tokens > 0
        if sample and (n - 1) not in rows:
            rows.append(n - 1)
        return BatchEntry(req, start, tokens, slots, sample=sample, logit_rows=rows)

    # ---- results -------------------------------------------------------------------------
    def _process_result(self, batch: ScheduleBatch, result: ForwardOutput) -> List[TokenOutput]:
        if self.pooler is not None:
            return self._process_pooled(batch, result)
        sampled = self._sample(batch, result)
        outputs: List[TokenOutput] = []
        for i, entry in enumerate(batch.entries):
            req = entry.req
            if req.wants_input_logprobs and not req.output_ids:  # slicing costs ~5us a row
                record_input_logprobs(entry, result.logits[result.row_offsets[i]:result.row_offsets[i + 1]])
            elif self.jump_forward is not None and self.jump_forward.forced:  # forced tokens' logprobs
                self.jump_forward.record_logprobs(entry, result.logits, result.row_offsets[i])
            prompt_done = entry.completes_prompt
            if i in sampled:
                self._commit(req, sampled[i])
            elif prompt_done and req.sampling_params.max_new_tokens == 0:
                req.finish("length", length=0)
            self._after_step(req, prompt_done, outputs)
        return outputs

    def _sample(self, batch: ScheduleBatch, result: ForwardOutput) -> Dict[int, Tuple[int, Optional[torch.Tensor]]]:
        """Entry index -> (next token, its row of log-probabilities when the request wants them)."""
        return self._launch_sampling(batch, result).resolve()

    def _launch_sampling(self, batch: ScheduleBatch, result: ForwardOutput) -> "LaunchedSampling":
        """Queues the sampling kernels; the host learns the tokens only at resolve()."""
        picks = [(i, e) for i, e in enumerate(batch.entries) if e.sample and not e.req.finished]
        if not picks:
            return LaunchedSampling([], None, {})
        rows = [result.row_offsets[i + 1] - 1 for i, _ in picks]
        logits = result.logits
        if rows != list(range(logits.shape[0])):
            logits = logits[host_to_device(torch.tensor(rows, dtype=torch.int64), logits.device)]
        if self.grammar is not None:  # -inf where the grammar forbids; a masked copy
            logits = self.grammar.constrain(logits, [e.req for _, e in picks])
        wants = [k for k, (_, e) in enumerate(picks) if e.req.return_logprob]
        sampling_rows = [SamplingRow(e.req.sampling_params, e.req.input_ids, e.req.output_ids,
                                     self.eos_token_ids) for _, e in picks]
        logprobs = compute_sampling_logprobs(  # SGLang's convention (executor/sampler.py)
            logits[wants], [sampling_rows[k] for k in wants], self.sampler.vocab_size,
            self.logprob_mode, self.sampler.logit_processor) if wants else None
        row_logprobs = dict(zip(wants, logprobs)) if wants else {}
        return LaunchedSampling(picks, self.sampler.sample(logits, sampling_rows), row_logprobs)

    def _commit(self, req: Req, sampled) -> None:
        """What a step's sampling gave the request (scheduler/speculative.py commits several)."""
        self._append_token(req, *sampled)

    def _append_token(self, req: Req, token: int, logprobs: Optional[torch.Tensor]) -> None:
        if req.finished:
            return
        if self.grammar is not None and not self.grammar.accept(req, token):
            return  # refused by the grammar: the request ended without it
        req.output_ids.append(token)
        weight_versions.record_token(req, self.weight_version, self.kv.epoch)
        if req.first_token_time is None:
            req.first_token_time = time.monotonic()
        if logprobs is not None:
            req.pending_output_logprobs.append((float(logprobs[token]), token))
            record_output_extras(req, logprobs.view(1, -1))  # top_logprobs_num, token_ids_logprob
        self.stop_checker.check(req)

    def _process_pooled(self, batch: ScheduleBatch, result: ForwardOutput) -> list:
        self.pooler.absorb(batch, result)  # finishes the requests whose input is complete
        outputs: list = []
        for entry in batch.entries:
            self._after_step(entry.req, entry.completes_prompt, outputs)
        return outputs

    def _after_step(self, req: Req, prompt_done: bool, outputs: List[TokenOutput]) -> None:
        if req.finished:
            if req is self.prefilling or req in self.running:
                self._remove_active(req)
            self.kv.release(req)
            outputs.append(req.take_output(self.weight_version))
            return
        if prompt_done:
            if req is self.prefilling:
                self.prefilling = None
            if req not in self.running:
                self.kv.cache_unfinished(req)
                self.running.append(req)
        else:
            self.kv.cache_unfinished(req)
        if req.stream and self._stream_due(req):
            outputs.append(req.take_output(self.weight_version))

    def _stream_due(self, req: Req) -> bool:
        new = len(req.output_ids) - req.sent_output_len
        return new >= self.config.stream_interval or (new > 0 and req.sent_output_len == 0)

    # ---- control ---------------------------------------------------------------------------
    def flush_cache(self) -> dict:
        if self.has_work():
            return {"success": False,
                    "message": f"cache not flushed: {self.num_requests()} requests are running or queued"}
        self.kv.flush()
        return {"success": True, "message": "cache flushed"}

    # weight updates and memory release (rollserve/weight_sync/service.py) call these between steps
    def num_active_requests(self) -> int:
        return len(self._active())

    def abort_all_now(self) -> List[TokenOutput]:
        """Abort every request and release the running ones now; returns their outputs."""
        return self.abort(None, abort_all=True) + self._release_aborted()

    def drop_all_kv(self) -> int:
        """Reuse no KV from now on: running requests go back to the front of the queue with
        their tokens kept (their KV is recomputed), and the prefix cache is emptied.
        Returns how many requests were running."""
        active = self._active()
        for req in reversed(active):
            self.kv.retract(req)
            if not req.output_ids:  # mid-prompt: what it gathered from the prompt is redone
                clear_input_logprobs(req)
                if isinstance(req, EmbeddingReq):
                    req.pooled, req.pooled_rows = None, 0
            self.waiting.appendleft(req)
        self.running, self.prefilling = [], None
        self.kv.flush()
        return len(active)

    def weights_changed(self, mode: str, flush_cache: bool = True) -> List[TokenOutput]:
        """The weights were just written: settle the requests in flight as `mode` says
        (scheduler/weight_versions.py) and start a new weight epoch, so that no KV of the
        old weights is matched again. flush_cache frees that KV now rather than as it ages.
        Returns the outputs of requests that ended here."""
        outputs: List[TokenOutput] = []
        if mode in ("retract", "restart"):
            self.drop_all_kv()
        if mode == "restart":
            for req in [r for r in self.waiting if r.output_ids]:
                if weight_versions.can_restart(req):
                    weight_versions.reset_for_restart(req)
                    if self.grammar is not None:
                        self.grammar.replay(req)
                    continue
                self.waiting.remove(req)
                req.finish("abort", message="weights updated with in_flight_requests='restart', "
                                            "but this stream had already sent tokens")
                outputs.append(req.take_output(self.weight_version))
        self.kv.new_weight_epoch()
        if flush_cache:
            self.kv.drop_stale()
        return outputs

    def info(self) -> dict:
        tree = self.kv.tree
        return {
            "max_total_num_tokens": self.runner.max_total_tokens,
            "max_running_requests": self.runner.max_running_requests,
            "context_length": self.runner.context_len,
            "max_req_input_len": min(self.runner.context_len, self.runner.max_total_tokens) - 1,
            "routed_experts": self.runner.routed_experts is not None,
            "num_running_reqs": len(self._active()),
            "num_queued_reqs": len(self.waiting),
            "kv_used_tokens": self.kv.used_slots(),
            "kv_cached_tokens": tree.total_size() if tree else 0,
            "new_token_ratio": round(self.new_token_ratio.value, 4),
            "retracted_recomputed_tokens_total": self.kv.recomputed_tokens,
            "weight_version": self.weight_version,
            "memory_usage": self.runner.memory_usage(),
            **self.stats.snapshot(),
        }


def abort_hits(req_rid: str, rid: Optional[str], abort_all: bool) -> bool:
    """Whether an abort of `rid` (or of all) reaches the request req_rid; the n samples of
    one request run as rid-0 .. rid-{n-1}."""
    if abort_all or req_rid == rid:
        return True
    head, _, k = req_rid.rpartition("-")
    return head == rid and k.isdigit()


@dataclass
class LaunchedSampling:
    picks: List[Tuple[int, BatchEntry]]  # (entry index, entry) of each sampled row
    next_ids: Optional[torch.Tensor]  # [len(picks)] on the device, maybe still being computed
    row_logprobs: Dict[int, torch.Tensor]
    host_ids: Optional[HostCopy] = None

    def __post_init__(self):
        if self.next_ids is not None:
            self.host_ids = HostCopy(self.next_ids)  # queued right behind the sampling kernels

    def resolve(self) -> Dict[int, Tuple[int, Optional[torch.Tensor]]]:
        if not self.picks:
            return {}
        next_ids = self.host_ids.wait().tolist()  # waits for this step's kernels only
        return {i: (t, self.row_logprobs.get(k)) for k, ((i, _), t) in enumerate(zip(self.picks, next_ids))}

