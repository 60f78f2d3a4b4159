"""The scheduler's own process: receive requests over ZeroMQ, step the batch,
send token outputs to the detokenizer."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import traceback
from concurrent.futures import Future
from typing import Any, Callable, Dict

import zmq

from rollserve.scheduler.config import SchedulerConfig
from rollserve.core.io import (HEARTBEAT_INTERVAL_S, AbortReq, BatchTokenOutput, Heartbeat,
                                 RpcReq, RpcResult, TokenizedEmbeddingReq, TokenizedGenerateReq)
from rollserve.core.logging_setup import configure_logging, exit_with_parent, ipc_dir_of
from rollserve.executor.model_runner import ModelRunner
from rollserve.scheduler.overlap_scheduler import make_scheduler
from rollserve.scheduler.scheduler import abort_hits
from rollserve.scheduler.profiler import ProfileRequest, StepProfiler
from rollserve.core.tokenizer import eos_token_ids, load_tokenizer
from rollserve.weight_sync.checker import WeightChecker
from rollserve.weight_sync.service import DeferredUpdate, WeightSyncService
from rollserve.weight_sync.trainer_protocols import TrainerProtocols
from rollserve.executor.expert_distribution import expert_distribution_calls
from rollserve.executor.parallel_state import dp_attention, group_rank
from rollserve.scheduler.dp_attention import DPAttention
from rollserve.scheduler.tp_sync import (DiscardingSender, combine_answers, done_on_every_rank,
                                         join_tensor_parallel, share_messages)

logger = logging.getLogger(__name__)
# SGLang's three (abort, its default; retract; in_place), vLLM's keep (= in_place) and wait
PAUSE_MODES = ("abort", "retract", "in_place", "keep", "wait")


class SchedulerProcess:
    def __init__(self, config: SchedulerConfig, ports: dict):
        self.config = config
        tokenizer = load_tokenizer(config.tokenizer_path, trust_remote_code=config.trust_remote_code)
        self.runner = ModelRunner(config.executor)
        self.scheduler = make_scheduler(config, self.runner, tokenizer,
                                        eos_token_ids(config.model_path, tokenizer))
        self.leader = group_rank() == 0  # under TP only rank 0 receives (tp_sync.py)
        self.ports = ports
        # DP attention: each rank runs its own requests, so each sends its own outputs
        self.dp = DPAttention() if dp_attention() else None
        self.context, self.recv, self.send = None, None, DiscardingSender()
        if self.leader or self.dp is not None:
            self.context = context = zmq.Context(2)
            context.setsockopt(zmq.LINGER, 0)
            self.send = context.socket(zmq.PUSH)
            self.send.connect(ports["detokenizer"])
        if self.leader:
            self.recv = self.context.socket(zmq.PULL)
            self.recv.bind(ports["scheduler"])
        self.paused = False
        self.draining = False  # pause mode "wait": no new request starts, then pause
        self.held_requests: list = []  # arrived while draining; submitted at continue
        self.last_step_start = None  # for the watchdog
        self.loop_tick = time.monotonic()  # for the heartbeat
        self.busy_with = None  # the control call running now
        self.deferred: list = []  # (rpc_id, Future) of control calls finishing off the loop
        self.weight_sync = WeightSyncService(self.runner, self.scheduler, self._send_outputs,
                                             config.dist_timeout)
        if self.dp is not None:  # an update waits for the replica's requests, not this rank's
            self.weight_sync.replica_busy = lambda: self.dp.busy_now(self.scheduler)
        self.profiler = StepProfiler()
        self.weight_checker = WeightChecker(self.runner, self.scheduler, self._send_outputs)
        self.trainer_protocols = TrainerProtocols(self.weight_sync)
        self.control_calls = self._control_calls()

    def ready_info(self) -> dict:
        return {"status": "ready", "pid": os.getpid(), **self.scheduler.info()}

    def loop(self) -> None:
        threading.Thread(target=self._watchdog, daemon=True).start()
        if self.leader:  # the front end watches rank 0; the others are its children too
            threading.Thread(target=self._heartbeat, daemon=True).start()
        if self.dp is not None:
            return self._loop_dp_attention()
        while True:
            self.loop_tick = time.monotonic()
            self._receive(block=not self.scheduler.has_work() or self._held())
            self._answer_deferred()
            self._run_pending_updates()
            if self._held():  # again: what was just received may pause or release
                continue
            self.last_step_start = time.monotonic()
            busy = self.scheduler.has_work()
            outputs = self.scheduler.step()
            self.last_step_start = None
            if busy:  # a profile's num_steps counts steps that ran something
                self.profiler.on_step()
            if outputs:
                self.send.send_pyobj(BatchTokenOutput(outputs))
            self._finish_draining()
            self._run_pending_updates()

    def _loop_dp_attention(self) -> None:
        """The loop under DP attention: the ranks share whether any has work before each
        step, then all run one forward each (an idle one where a rank has none)."""
        while True:
            self.loop_tick = time.monotonic()
            self._receive(block=not self.dp.busy_anywhere or self._held())
            self._answer_deferred()
            self.dp.sync(self.scheduler.has_work(), self.scheduler.num_requests())
            self._run_pending_updates()
            if self._held() or not self.dp.busy_anywhere:
                self._finish_draining()
                continue
            self.last_step_start = time.monotonic()
            outputs = self.dp.step(self.scheduler, self.scheduler.runner)
            self.last_step_start = None
            self.profiler.on_step()
            self._send_outputs(outputs)
            self._finish_draining()
            self._run_pending_updates()

    def _busy(self) -> bool:
        """Whether the replica has requests in flight (DP attention: any rank, as shared)."""
        return self.scheduler.has_work() if self.dp is None else self.dp.busy_anywhere

    def _admit(self, msg) -> None:
        """A request for this replica's scheduler (DP attention: only on the rank that keeps it)."""
        if self.dp is None or self.dp.owns():
            self.scheduler.add_request(msg)

    def _held(self) -> bool:
        return self.paused or self.weight_sync.holds_generation()

    def _receive(self, block: bool) -> None:
        # every TP rank handles rank 0's messages, in order, before the same step
        for msg in share_messages(self._collect(block) if self.leader else None):
            self._handle(msg)

    def _collect(self, block: bool) -> list:
        msgs = []
        if block and not self.recv.poll(timeout=self._idle_poll_ms()):
            return msgs
        while True:
            try:
                msgs.append(self.recv.recv_pyobj(flags=zmq.NOBLOCK))
            except zmq.Again:
                return msgs

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, (TokenizedGenerateReq, TokenizedEmbeddingReq)):
            if (self.draining or self.weight_sync.holds_new_requests()
                    or (self.held_requests and self.paused)):
                self.held_requests.append(msg)
            else:
                self._admit(msg)
        elif isinstance(msg, AbortReq):
            self._unhold_aborted(msg)
            outputs = self.scheduler.abort(msg.rid, msg.abort_all)
            if outputs:
                self.send.send_pyobj(BatchTokenOutput(outputs))
        elif isinstance(msg, RpcReq):
            result = self._rpc(msg)
            if isinstance(result, Future):  # it waits on someone outside: answered when done
                self.deferred.append((msg.rpc_id, result))  # (every TP rank in the same order)
                return
            if isinstance(result, DeferredUpdate):  # answered when it runs (_run_pending_updates)
                # every rank runs it at the same step (same requests), and combines there
                result.reply = lambda answer, rpc_id=msg.rpc_id: self._send_answer(rpc_id, answer)
                return
            self._send_answer(msg.rpc_id, result)
        else:
            logger.error("unknown message %r", type(msg))

    def _send_answer(self, rpc_id: int, result: dict) -> None:
        answer = combine_answers(result)  # None on ranks other than 0
        if answer is not None:
            self.send.send_pyobj(RpcResult(rpc_id, answer))

    def _idle_poll_ms(self) -> int:
        """How long an idle loop waits for a message: briefly while a wait outside (a join, a
        trainer's broadcast) may end, so that its answer is not a second late."""
        return 5 if self.deferred or self.weight_sync.waits_for_trainer() else 1000

    def _answer_deferred(self) -> None:
        """Answer the control calls whose outside wait ended, once it ended on every TP rank
        (their answers combine in one collective, so the ranks take them at the same step)."""
        self.weight_sync.note_received(done_on_every_rank)  # broadcasts, the same way
        if not self.deferred:  # the same on every rank: they handled the same messages
            return
        done = done_on_every_rank([future.done() for _, future in self.deferred])
        for item, finished in zip(list(self.deferred), done):
            if finished:
                self.deferred.remove(item)
                self._send_answer(item[0], item[1].result())

    def _send_outputs(self, outputs) -> None:
        if outputs:
            self.send.send_pyobj(BatchTokenOutput(outputs))

    def _control_calls(self) -> Dict[str, Callable[..., dict]]:
        """Every control call the front end may send, by name: this process's own and the
        weight-sync service's. A new call is one method plus one entry here."""
        calls = {
            "flush_cache": self.scheduler.flush_cache,
            "get_info": self.get_info,
            "start_profile": self.start_profile,
            "stop_profile": self.profiler.stop,
            "pause_generation": self.pause_generation,
            "continue_generation": self.continue_generation,
            "is_paused": self.is_paused,
        }
        calls.update(self.weight_sync.control_calls())
        calls.update(self.weight_checker.control_calls())  # weights checker, weight version
        calls.update(self.trainer_protocols.control_calls())  # TRL's weight pushes
        calls.update(expert_distribution_calls(self.scheduler.runner.expert_recorder))
        return calls

    def _rpc(self, msg: RpcReq) -> dict:
        handler = self.control_calls.get(msg.method)
        if handler is None:
            return {"success": False, "message": f"unknown control call {msg.method!r}"}
        self._send_outputs(self.scheduler.drain())  # control calls run between steps
        self.busy_with = msg.method
        try:
            return handler(**msg.kwargs)
        except Exception as e:  # a bad control call must not kill the scheduler
            logger.exception("control call %s failed", msg.method)
            return {"success": False, "message": f"{type(e).__name__}: {e}"}
        finally:
            self.busy_with = None

    # ---- control calls -------------------------------------------------------------
    def get_info(self) -> dict:
        info = self.scheduler.info() if self.dp is None else self.dp.combine_info(self.scheduler.info())
        return {"success": True, **info, **self.scheduler.runner.model_summary}

    def start_profile(self, **fields) -> dict:
        return self.profiler.start(ProfileRequest(**fields))

    def pause_generation(self, mode: str = "abort") -> dict:
        """abort (SGLang's default): running and queued requests end with finish_reason
        abort; in_place / keep (vLLM's name): they stay where they are, KV included, and go
        on at continue; retract: they go back to the queue and recompute their KV at
        continue; wait: running and queued requests finish, new ones are held, then
        generation pauses (is_paused tells when). A weight update while paused treats the
        requests in flight as the mode says (weight_sync/service.py)."""
        if mode not in PAUSE_MODES:
            return {"success": False, "message": f"mode must be one of {PAUSE_MODES}, got {mode!r}"}
        if mode == "wait":
            self.draining = True
            self._finish_draining()
            return {"success": True, "message": "pausing once running requests finish"}
        if mode == "abort":
            self._send_outputs(self.scheduler.abort_all_now())
        elif mode == "retract":
            self.scheduler.drop_all_kv()
        self.paused = True
        self.weight_sync.pause_mode = mode
        return {"success": True, "message": f"generation paused ({mode})"}

    def continue_generation(self) -> dict:
        self.paused = self.draining = False
        self.weight_sync.pause_mode = None
        held, self.held_requests = self.held_requests, []
        for msg in held:
            self._admit(msg)
        return {"success": True, "message": "generation continued"}

    def is_paused(self) -> dict:
        return {"success": True, "is_paused": self.paused}

    def _finish_draining(self) -> None:
        if self.draining and not self._busy():
            self.draining, self.paused = False, True
            self.weight_sync.pause_mode = "wait"

    def _unhold_aborted(self, msg: AbortReq) -> None:
        """Held requests (pause wait, an update waiting) that the abort reaches join the queue,
        where scheduler.abort ends them at once, so their callers get their answer now."""
        hit = [m for m in self.held_requests if abort_hits(m.rid, msg.rid, msg.abort_all)]
        for m in hit:
            self.held_requests.remove(m)
            self._admit(m)

    def _run_pending_updates(self) -> None:
        """Updates waiting for requests in flight run once those finished (or are refused
        at their timeout); the requests held meanwhile are then let in."""
        if not self.weight_sync.has_runnable():  # (not a receive: generation goes on beside it)
            return
        self._send_outputs(self.scheduler.drain())
        if self.dp is None:
            self.weight_sync.run_pending()
        else:  # the ranks decide together: the replica's work, rank 0's clock
            self.weight_sync.run_pending(busy=self.dp.busy_anywhere, now=self.dp.clock)
        if not self.weight_sync.holds_new_requests() and not (self.paused or self.draining):
            held, self.held_requests = self.held_requests, []
            for msg in held:
                self._admit(msg)

    def _heartbeat(self) -> None:
        """The front end's proof that this process runs (a stopped or frozen process sends
        none; a step stuck in the loop is the watchdog's). Its own socket: sockets are not
        shared between threads."""
        sock = self.context.socket(zmq.PUSH)
        sock.connect(self.ports["detokenizer"])
        while True:
            try:  # never block: a beat nobody reads yet is simply dropped
                sock.send_pyobj(Heartbeat(os.getpid(), time.monotonic() - self.loop_tick,
                                          self.busy_with), flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            time.sleep(HEARTBEAT_INTERVAL_S)

    def _watchdog(self) -> None:
        timeout = self.config.watchdog_timeout
        while True:
            time.sleep(min(5.0, timeout / 4))
            started = self.last_step_start
            if started is not None and time.monotonic() - started > timeout:
                logger.error("watchdog: a forward step has run for over %.0fs; exiting", timeout)
                os._exit(3)


def run_scheduler_process(config: SchedulerConfig, ports: dict, ready_pipe, rank: int = 0) -> None:
    """`rank`: this process's tensor-parallel rank (0 without TP)."""
    tp = config.executor.tp_size
    configure_logging(config.log_level, prefix="scheduler" if tp == 1 else f"scheduler TP{rank}")
    exit_with_parent(ipc_dir_of(ports))
    try:
        config = join_tensor_parallel(config, rank)
        proc = SchedulerProcess(config, ports)
    except Exception as e:
        ready_pipe.send({"status": "error", "message": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc()})
        return
    ready_pipe.send(proc.ready_info())
    ready_pipe.close()
    # Objects alive now (model, tokenizer, libraries) live as long as the process: frozen,
    # the collector stops rescanning them on every full pass (CPU, tiny model, 800
    # running requests: host time per step 41 -> 34 ms).
    gc.collect()
    gc.freeze()
    try:
        proc.loop()
    except Exception:
        logger.exception("scheduler crashed")
        os._exit(1)
