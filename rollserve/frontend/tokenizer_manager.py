"""The front process's side of the engine: tokenize, send to the scheduler, wait
for results and shape them as SGLang does. Used by the HTTP server (inside
uvicorn's event loop) and by the in-process Engine (in a loop thread of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

import zmq
import zmq.asyncio

from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.startup import detect_pooling
from rollserve.frontend.encode_manager import CLASSIFICATION, EMBEDDING, run_encode, wrong_model_error
from rollserve.core.io import (AbortReq, BatchTokenOutput, Heartbeat, RpcReq, RpcResult,
                                 TokenizedGenerateReq, TokenOutput)
from rollserve.frontend.processes import EngineProcesses, start_engine_processes
from rollserve.frontend.request_input import GenerateReqInput, PromptItem, normalize
from rollserve.core.sampling_params import InvalidRequest
from rollserve.frontend.grammar_check import check_grammar
from rollserve.core.tokenizer import load_tokenizer
from rollserve.frontend.result_format import ReqState, ResultBuilder
from rollserve.frontend.truncation import truncate_prompt
from rollserve.frontend.multimodal import attach_images, image_processor_for

logger = logging.getLogger(__name__)


class EngineDeadError(RuntimeError):
    pass


class EngineStalledError(EngineDeadError):
    """The scheduler process stopped answering (stopped, or stuck); it may come back."""


class ShuttingDownError(EngineDeadError):
    """The server is stopping: the request was not finished within the grace period."""


# /health and every wait on the scheduler call it stalled after this long without a word
# from it (it sends a heartbeat every HEARTBEAT_INTERVAL_S); SGLang's variable and default
def _stall_timeout(default: float = 20.0) -> float:
    try:
        value = float(os.environ.get("SGLANG_HEALTH_CHECK_TIMEOUT") or default)
    except ValueError:
        return default
    return value if value > 0 else default


STALL_TIMEOUT_S = _stall_timeout()
POLL_S = 1.0  # how often a waiting request looks at the heartbeat


class TokenizerManager:
    def __init__(self, args: ServerArgs):
        """`args` resolved by frontend.startup.resolve_server_args (model path, pooling)."""
        self.args = args
        self.model_path = args.model_path
        self.tokenizer_path = args.tokenizer_path or args.model_path
        self.tokenizer = load_tokenizer(self.tokenizer_path, args.chat_template,
                                        args.trust_remote_code, args.hf_chat_template_name)
        self.pooling = detect_pooling(args)  # embedding / reward model; None: generation
        self.images = image_processor_for(args, self.tokenizer)  # None: a text-only model
        self.is_generation = self.pooling is None
        self.procs: EngineProcesses = start_engine_processes(args)
        info = self.procs.info
        self.context_len: int = info["context_length"]
        self.max_total_num_tokens: int = info["max_total_num_tokens"]
        self.max_req_input_len: int = info["max_req_input_len"]
        self.routed_experts_on: bool = bool(info.get("routed_experts"))  # MoE + the server flag
        self.states: Dict[str, ReqState] = {}
        self.rpc_futures: Dict[int, asyncio.Future] = {}
        self.rpc_ids = itertools.count()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.dead_reason: Optional[str] = None
        self.stopping_reason: Optional[str] = None  # set by fail_all at shutdown
        self.closing = False
        self.claimed: set = set()  # every rid in flight, samples' included (claim_rids)
        self.last_heard = time.monotonic()  # any message from the scheduler, heartbeats included
        self.last_beat: Optional[Heartbeat] = None

    # ---- event-loop plumbing ---------------------------------------------------------
    def start(self) -> None:
        """Open the sockets now (the server calls it at start, so that heartbeats count)."""
        self._ensure_started()

    def _ensure_started(self) -> None:
        """Create the sockets and background tasks in the running loop (first call)."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self.last_heard = time.monotonic()
        self.zmq_context = context = zmq.asyncio.Context()
        context.setsockopt(zmq.LINGER, 0)  # never block exit on messages nobody will read
        self.send_sock = context.socket(zmq.PUSH)
        self.send_sock.connect(self.procs.ports["scheduler"])
        self.recv_sock = context.socket(zmq.PULL)
        self.recv_sock.bind(self.procs.ports["tokenizer"])
        self._tasks = [loop.create_task(self._receive_loop()), loop.create_task(self._watch_children())]

    async def _receive_loop(self) -> None:
        while True:
            msg = await self.recv_sock.recv_pyobj()
            self.last_heard = time.monotonic()
            if isinstance(msg, Heartbeat):
                self.last_beat = msg
                continue
            if isinstance(msg, BatchTokenOutput):
                for out in msg.outputs:
                    self._on_output(out)
            elif isinstance(msg, RpcResult):
                future = self.rpc_futures.pop(msg.rpc_id, None)
                if future is not None and not future.done():
                    future.set_result(msg.result)

    def _on_output(self, out: TokenOutput) -> None:
        state = self.states.get(out.rid)
        if state is None:
            return  # the client went away and the request was already dropped
        state.builder.add(out)
        state.finished = out.finished_reason is not None
        state.event.set()

    async def _watch_children(self) -> None:
        while self.dead_reason is None:
            await asyncio.sleep(0.5)
            if not self.procs.alive() and not self.closing:
                self.dead_reason = "the scheduler or detokenizer process died"
                logger.error(self.dead_reason)
                for state in self.states.values():
                    state.event.set()
                for future in self.rpc_futures.values():
                    if not future.done():
                        future.set_exception(EngineDeadError(self.dead_reason))

    # ---- generation ------------------------------------------------------------------------
    async def generate(self, obj: GenerateReqInput) -> AsyncIterator[Any]:
        """Yields the final result (dict, or list for a batch or n > 1) once, or with
        stream=True one dict per update (cumulative text, with `index` for batches)."""
        self._ensure_started()
        self._check_alive()
        if not self.is_generation:
            raise wrong_model_error(self.pooling, "generation", self.model_path)
        items, is_batch = normalize(obj)
        rids = [rid for item in items for rid in _sample_rids(item)]
        self.claim_rids(rids)  # before any await: two requests cannot both pass
        expanded: List[_Sample] = []
        try:
            # concurrently: each prompt with n > 1 is prefilled once first (_warm_prefix), and a
            # batch of P such prompts must not wait for P prefills one after another (issue #17)
            samples = await asyncio.gather(*(self._prepare(item, obj.return_text_in_logprobs)
                                             for item in items))
            expanded = [s for group in samples for s in group]
            as_list = is_batch or len(expanded) > 1
            if obj.stream:
                async for chunk in self._stream(expanded, as_list):
                    yield chunk
            else:
                yield await self._collect(expanded, as_list)
        finally:
            self._abort_unfinished(expanded)
            self.release_rids(rids)

    def claim_rids(self, rids: List[str]) -> None:
        """Reserve the rids a request will run under. A rid already in flight (another
        request's, or one of another request's n samples "<rid>-<k>") is refused by name,
        so that no client can read or abort into another's output by reusing its id."""
        seen = set()
        for rid in rids:
            if rid in self.claimed or rid in self.states or rid in seen:
                raise InvalidRequest("rid", f"a request with rid {rid!r} is already in flight; "
                                            "every request in flight needs its own rid")
            seen.add(rid)
        self.claimed |= seen

    def release_rids(self, rids: List[str]) -> None:
        self.claimed.difference_update(rids)

    async def _prepare(self, item: PromptItem, text_in_logprobs: bool) -> List["_Sample"]:
        ids = self._tokenize(item)
        params = item.sampling_params
        params.normalize_and_validate(vocab_size=len(self.tokenizer))
        check_grammar(params, self.args.grammar_backend)  # a malformed schema/regex/ebnf: 400
        self._cap_new_tokens(params, len(ids))
        n = params.n
        if n > 1 and not self.args.disable_radix_cache:
            await self._warm_prefix(ids, item.mm_inputs)
        out = []
        for k in range(n):
            sample_params = params if n == 1 else _with(params, n=1, seed=None if params.seed is None
                                                        else params.seed + k)
            rid = item.rid if n == 1 else f"{item.rid}-{k}"
            out.append(_Sample(index=item.index * n + k, rid=rid, msg=TokenizedGenerateReq(
                rid=rid, input_ids=ids, sampling_params=sample_params,
                return_logprob=item.return_logprob, logprob_start_len=item.logprob_start_len,
                top_logprobs_num=item.top_logprobs_num,
                return_routed_experts=item.return_routed_experts,
                routed_experts_start_len=item.routed_experts_start_len, mm_inputs=item.mm_inputs,
                token_ids_logprob=item.token_ids_logprob),
                text_in_logprobs=text_in_logprobs))
        return out

    def _tokenize(self, item: PromptItem) -> List[int]:
        field_name = "text" if item.text is not None else "input_ids"
        ids = self.tokenizer.encode(item.text) if item.text is not None else item.input_ids
        if not ids:
            raise InvalidRequest(field_name, "the prompt is empty")
        if item.images:  # expands the image placeholders, sets item.mm_inputs
            ids = attach_images(self.images, item, ids, field_name, self.max_req_input_len)
        vocab = len(self.tokenizer)
        if item.input_ids is not None and any(t < 0 or t >= vocab for t in ids):
            raise InvalidRequest("input_ids", f"token ids must be in [0, {vocab})")
        if item.token_ids_logprob and any(t < 0 or t >= vocab for t in item.token_ids_logprob):
            raise InvalidRequest("token_ids_logprob", f"token ids must be in [0, {vocab})")
        limit = self.max_req_input_len
        if len(ids) > limit:
            if not self.args.allow_auto_truncate:
                raise InvalidRequest(field_name, (
                    f"the prompt has {len(ids)} tokens, over the maximum input length {limit} "
                    f"(context length {self.context_len}, KV pool {self.max_total_num_tokens})"))
            ids = truncate_prompt(ids, item.sampling_params.max_new_tokens, limit)
        if item.logprob_start_len >= len(ids):
            raise InvalidRequest("logprob_start_len", f"must be < the prompt length {len(ids)}")
        if item.return_routed_experts and not self.routed_experts_on:
            raise InvalidRequest("return_routed_experts", (
                "needs a MoE model served with --enable-return-routed-experts"))
        if item.routed_experts_start_len > len(ids):
            raise InvalidRequest("routed_experts_start_len",
                                 f"must be in [0, the prompt length {len(ids)}]")
        return ids

    def _cap_new_tokens(self, params, prompt_len: int) -> None:
        """As SGLang: no request asks for more output than fits beside its prompt in the
        context (and the KV pool), so the KV reserved for one request stays bounded."""
        room = min(self.context_len, self.max_total_num_tokens) - prompt_len
        if params.max_new_tokens > room:
            params.max_new_tokens = max(room, 0)
            params.min_new_tokens = min(params.min_new_tokens, params.max_new_tokens)

    async def _warm_prefix(self, ids: List[int], mm_inputs=None) -> None:
        """For n > 1: prefill the prompt once so that the n samples share it."""
        from rollserve.core.sampling_params import SamplingParams

        rid = f"warm-{uuid.uuid4().hex}"
        sample = _Sample(-1, rid, TokenizedGenerateReq(rid=rid, input_ids=ids,
                                                        sampling_params=SamplingParams(max_new_tokens=0),
                                                        mm_inputs=mm_inputs))
        await self._collect([sample], as_list=False)

    def _submit(self, samples: List["_Sample"], stream: bool) -> None:
        for s in samples:
            s.msg.stream = stream
            self.states[s.rid] = ReqState(ResultBuilder(s.msg, self.tokenizer, s.text_in_logprobs,
                                                        bool(self.args.custom_logit_processor)))
            self.send_sock.send_pyobj(s.msg)
            if self.args.log_requests:
                logger.info("request %s: %d prompt tokens, %s", s.rid, len(s.msg.input_ids),
                            s.msg.sampling_params)

    async def _collect(self, samples: List["_Sample"], as_list: bool):
        self._submit(samples, stream=False)
        results = []
        for s in samples:
            state = self.states[s.rid]
            while not state.finished:
                await self.wait_event(state.event)
                state.event.clear()
            results.append(state.builder.result(index=s.index if as_list else None))
            self.states.pop(s.rid, None)
        return results if as_list else results[0]

    async def _stream(self, samples: List["_Sample"], as_list: bool):
        self._submit(samples, stream=True)
        pending = {s.rid: s for s in samples}
        while pending:
            waiters = {asyncio.ensure_future(self.states[rid].event.wait()): rid for rid in pending}
            try:
                done = set()
                while not done:
                    done, _ = await asyncio.wait(waiters, timeout=POLL_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    self._check_alive()
            finally:  # also when the consumer goes away mid-wait
                for task in waiters:
                    task.cancel()
            for task in done:
                rid = waiters[task]
                state = self.states[rid]
                state.event.clear()
                yield state.builder.result(index=pending[rid].index if as_list else None)
                if state.finished:
                    self.states.pop(rid, None)
                    del pending[rid]

    def _abort_unfinished(self, samples: List["_Sample"]) -> None:
        for s in samples:
            state = self.states.pop(s.rid, None)
            if state is not None and not state.finished and self.dead_reason is None:
                self.send_sock.send_pyobj(AbortReq(rid=s.rid))

    def _check_alive(self) -> None:
        if self.dead_reason is not None:
            raise EngineDeadError(self.dead_reason)
        if self.stopping_reason is not None:
            raise ShuttingDownError(self.stopping_reason)
        stalled = self.stalled_reason()
        if stalled is not None:
            raise EngineStalledError(stalled)

    def stalled_reason(self) -> Optional[str]:
        """Why the scheduler counts as stalled (no message, not even its heartbeat, for
        STALL_TIMEOUT_S), or None. Only once the sockets exist: before, nothing was sent."""
        quiet = time.monotonic() - self.last_heard
        if self._loop is None or quiet <= STALL_TIMEOUT_S:
            return None
        if self.recv_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            return None  # messages wait unread: this loop was busy, not the scheduler
        return f"the scheduler process has not answered for {quiet:.0f}s (stopped or stuck)"

    def health_problem(self) -> Optional[str]:
        """/health's view: stalled, or the scheduler's loop stuck for STALL_TIMEOUT_S (in a
        control call or a step) so that no request moves. Requests keep waiting through the
        latter (a long weight update is legitimate), but a health check says so."""
        stalled = self.stalled_reason()
        if stalled is not None:
            return stalled
        beat = self.last_beat
        if beat is not None and beat.loop_quiet_s > STALL_TIMEOUT_S:
            doing = f"in the control call {beat.busy_with}" if beat.busy_with else "in one step"
            return f"the scheduler's loop has been stuck {doing} for {beat.loop_quiet_s:.0f}s"
        return None

    async def wait_event(self, event: asyncio.Event) -> None:
        """event.wait(), but a scheduler that died or stalled meanwhile raises (-> 503)."""
        self._check_alive()
        while not event.is_set():
            try:
                await asyncio.wait_for(event.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
            self._check_alive()

    def fail_all(self, reason: str) -> None:
        """Shutdown: every waiting request and control call ends now with `reason`."""
        self.stopping_reason = reason
        for state in self.states.values():
            state.event.set()
        for future in self.rpc_futures.values():
            if not future.done():
                future.set_exception(ShuttingDownError(reason))

    def num_in_flight(self) -> int:
        return len(self.claimed) + len(self.rpc_futures)

    # ---- embedding and classification (rollserve.frontend.encode_manager) ---------------------
    async def encode(self, obj) -> Any:
        """Embeddings of obj's inputs (an EncodeReqInput): a dict, or a list for a batch."""
        return await run_encode(self, obj, EMBEDDING)

    async def classify(self, obj) -> Any:
        """Classifier (reward) scores of obj's inputs or conversations."""
        return await run_encode(self, obj, CLASSIFICATION)

    # ---- control -------------------------------------------------------------------------
    async def abort(self, rid: Optional[str] = None, abort_all: bool = False) -> None:
        self._ensure_started()
        self.send_sock.send_pyobj(AbortReq(rid=rid, abort_all=abort_all))

    async def rpc(self, method: str, timeout: Optional[float] = None, **kwargs) -> dict:
        """A control call; raises EngineStalledError (-> 503) once the scheduler has been
        silent for STALL_TIMEOUT_S, or after `timeout` seconds when given."""
        self._ensure_started()
        self._check_alive()
        rpc_id = next(self.rpc_ids)
        future = asyncio.get_running_loop().create_future()
        self.rpc_futures[rpc_id] = future
        self.send_sock.send_pyobj(RpcReq(rpc_id, method, kwargs))
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                try:
                    return await asyncio.wait_for(asyncio.shield(future), POLL_S)
                except asyncio.TimeoutError:
                    self._check_alive()
                    if deadline is not None and time.monotonic() > deadline:
                        raise EngineStalledError(f"the scheduler did not answer {method} "
                                                 f"within {timeout:.0f}s")
        finally:
            self.rpc_futures.pop(rpc_id, None)

    async def flush_cache(self) -> dict:
        return await self.rpc("flush_cache")

    async def get_load(self) -> dict:
        return await self.rpc("get_info", timeout=STALL_TIMEOUT_S)

    async def model_info(self) -> dict:
        """/get_model_info; weight_version is asked of the scheduler, its only owner."""
        info = await self.rpc("get_info", timeout=STALL_TIMEOUT_S)
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.tokenizer_path,
            "is_generation": self.is_generation,
            "weight_version": info.get("weight_version"),
            "context_length": self.context_len,
            **{key: info.get(key) for key in ("architecture", "num_experts", "num_experts_per_tok",
                                              "num_moe_layers", "mla")},
            "has_image_understanding": self.images is not None,  # SGLang's keys
            "has_audio_understanding": False,
        }

    def shutdown(self) -> None:
        """Stops the processes and closes the sockets; not to be called from the loop's own thread."""
        self.closing = True
        self.procs.stop()
        if self._loop is not None and self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(timeout=5)
        elif self._loop is not None:
            self.zmq_context.destroy(linger=0)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.zmq_context.destroy(linger=0)


@dataclass
class _Sample:
    index: int
    rid: str
    msg: TokenizedGenerateReq
    text_in_logprobs: bool = False


def _with(params, **changes):
    return dataclasses.replace(params, **changes)


def _sample_rids(item: PromptItem) -> List[str]:
    """The rids one prompt runs under: its own, and "<rid>-<k>" for each of n > 1 samples."""
    n = item.sampling_params.n
    return [item.rid] if n == 1 else [item.rid, *(f"{item.rid}-{k}" for k in range(n))]
