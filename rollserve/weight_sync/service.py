"""The scheduler process's weight-sync control calls (CONTROL_CALLS), run between steps.

Every update has the same shape: describe and validate everything (nothing is
written if anything is wrong: the old weights keep serving, whole), then stop the
running requests (paused, or aborted with finish_reason abort), write, retire
every KV computed with the old weights, and set the weight version.

Retiring KV: running requests go back to the front of the queue with the tokens
they generated so far, and their KV is recomputed with the new weights; the prefix
cache is emptied. So nothing computed with old weights is reused, by new requests
or by the ones that were running.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Protocol, Sequence

import torch

from rollserve.executor.model_runner import ModelRunner
from rollserve.executor.models.weights import checkpoint_targets, full_tensor
from rollserve.executor.parallel_state import first_failing_rank, group_rank, group_size
from rollserve.weight_sync import distributed
from rollserve.weight_sync.disk import load_checkpoint_files, validate_checkpoint
from rollserve.weight_sync.memory import KV_CACHE, WEIGHTS, MemoryOccupation, parse_tags
from rollserve.weight_sync.staged_receive import GroupReceiver
from rollserve.weight_sync.pickled_tensors import (FLATTENED_BUCKET, is_pickled_payload,
                                                   named_tensors_from_pickle)
from rollserve.weight_sync.tensor_transport import PayloadError, deserialize_named_tensors
from rollserve.weight_sync.validate import TensorInfo, WeightUpdateError, check_tensor_infos

logger = logging.getLogger(__name__)
# what an update does to requests in flight; as scheduler/weight_versions.IN_FLIGHT_MODES
IN_FLIGHT_MODES = ("wait", "retract", "in_place", "restart", "abort")
DEFAULT_IN_FLIGHT_TIMEOUT_S = 300.0


MAX_TRUNCATE_SIZE = 1 << 20  # get_weights_by_name returns at most this many values

CONTROL_CALLS = ("update_weights_from_disk", "update_weights_from_tensor", "update_weights_from_distributed", "init_weights_update_group", "destroy_weights_update_group", "get_weights_by_name", "release_memory_occupation", "resume_memory_occupation")


class GenerationControl(Protocol):
    """What an update needs of the scheduler (scheduler/scheduler.py implements it)."""

    weight_version: str  # the scheduler owns it; an update with a new label sets it

    def abort_all_now(self) -> list: ...  # finishes every request as aborted; their outputs

    def num_active_requests(self) -> int: ...

    def drop_all_kv(self) -> int: ...  # running requests requeued (KV recomputed), cache emptied

    def has_work(self) -> bool: ...

    def num_requests(self) -> int: ...  # queued and running

    def weights_changed(self, mode: str, flush_cache: bool) -> list: ...  # settles requests


@dataclass
class DeferredUpdate:
    """An update waiting for the requests in flight to finish (mode wait), or queued
    behind one that is. The scheduler process runs it between steps (run_pending)."""

    apply: Callable[[], dict]
    deadline: float
    wait_idle: bool
    timeout_s: float
    reply: Callable[[dict], None] = field(default=lambda answer: None)
    # a receive beside generation (staged_receive.py): `received` turns true once it ended
    # on every rank; then `apply` judges (an answer, or a DeferredUpdate to go first in line)
    receiving: Optional[Future] = None
    group_name: Optional[str] = None
    received: bool = False
    judged: bool = True  # False: apply judges at the head of the line (receives, and after them)

    def waits_for_trainer(self) -> bool:
        return self.receiving is not None and not self.received


class WeightSyncService:
    def __init__(self, runner: ModelRunner, scheduler: GenerationControl,
                 send_outputs: Callable[[list], None], dist_timeout_s: Optional[float] = None):
        self.runner = runner
        self.dist_timeout_s = float(dist_timeout_s or distributed.INIT_TIMEOUT_S)
        self.joining: set = set()  # group names whose join runs in the background
        self.scheduler = scheduler
        self.send_outputs = send_outputs
        self.memory = MemoryOccupation(runner, runner.memory_saver)
        self.groups: Dict[str, GroupReceiver] = {}
        self.pause_mode: Optional[str] = None  # the scheduler process sets it while paused
        self.pending: Deque[DeferredUpdate] = deque()
        self.replica_busy: Callable[[], bool] = scheduler.has_work  # DP attention: all ranks'

    @property
    def model(self):
        return self.runner.model

    def control_calls(self) -> dict:
        """This service's control calls by name (the scheduler process's registry takes them)."""
        return {name: getattr(self, name) for name in CONTROL_CALLS}

    def holds_generation(self) -> bool:
        """True while memory is released: no forward step may run."""
        return bool(self.memory.released)

    def holds_new_requests(self) -> bool:
        """True while an update waits for the requests in flight: new ones wait for it. Not
        while the first in line still waits for the trainer's broadcast: generation goes on."""
        return self.has_runnable()

    def waits_for_trainer(self) -> bool:
        return any(d.waits_for_trainer() for d in self.pending)

    def note_received(self, done_on_every_rank: Callable[[List[bool]], List[bool]]) -> None:
        """Mark the receives that ended on every rank (scheduler/tp_sync.done_on_every_rank: a
        collective, so every rank calls this at the same point of its loop)."""
        waiting = [d for d in self.pending if d.waits_for_trainer()]
        if waiting:
            for deferred, done in zip(waiting, done_on_every_rank(
                    [d.receiving.done() for d in waiting])):
                deferred.received = done

    def has_runnable(self) -> bool:
        """Whether run_pending may act now (it acts on the first in line only)."""
        return bool(self.pending) and not self.pending[0].waits_for_trainer()

    def run_pending(self, busy: Optional[bool] = None, now: Optional[float] = None) -> None:
        """Apply the deferred updates whose time has come, in order; refuse one whose
        requests did not finish in time. Called by the scheduler process between steps.
        busy / now: the replica's (DP attention: shared by its ranks, so all decide alike);
        None: this process's own."""
        while self.pending:
            head = self.pending[0]
            if head.waits_for_trainer():
                return
            if not head.judged:  # received (or queued behind receives): judge it now
                self.pending.popleft()
                answer = head.apply()
                if isinstance(answer, DeferredUpdate):  # mode wait with requests in flight
                    answer.reply = head.reply
                    self.pending.appendleft(answer)
                else:
                    head.reply(answer)
                continue
            if head.wait_idle and (self.scheduler.has_work() if busy is None else busy):
                if (time.monotonic() if now is None else now) < head.deadline:
                    return
                self.pending.popleft()
                head.reply(_refused(WeightUpdateError(
                    f"{self.scheduler.num_requests()} requests in flight did not finish within "
                    f"in_flight_timeout={head.timeout_s:g}s; retry, or pass in_flight_requests "
                    f"'retract', 'in_place', 'restart' or 'abort'")))
                continue
            self.pending.popleft()
            head.reply(head.apply())

    # ---- the three update paths --------------------------------------------------------------
    def update_weights_from_disk(self, model_path: str, load_format: Optional[str] = None,
                                     flush_cache: bool = True, abort_all_requests: bool = False,
                                     weight_version: Optional[str] = None,
                                     in_flight_requests: Optional[str] = None,
                                     in_flight_timeout: Optional[float] = None,
                                     validate_only: bool = False) -> dict:
        def prepare():
            files = validate_checkpoint(self.model, model_path, load_format or "auto")
            return lambda: load_checkpoint_files(self.model, files)

        return self._update(prepare, f"from {model_path}", flush_cache, abort_all_requests,
                            weight_version, in_flight_requests, in_flight_timeout, validate_only)

    def update_weights_from_tensor(self, serialized_named_tensors: Sequence, load_format=None,
                                       flush_cache: bool = True, abort_all_requests: bool = False,
                                       weight_version: Optional[str] = None,
                                       allow_pickle: bool = False,
                                       in_flight_requests: Optional[str] = None,
                                       in_flight_timeout: Optional[float] = None) -> dict:
        """`allow_pickle`: the front end found the caller trusted (pickled_tensors.py)."""
        def prepare():
            if load_format not in (None, "direct", FLATTENED_BUCKET):
                raise WeightUpdateError(f"load_format {load_format!r} is not supported for tensors "
                                        "(None: buckets made by serialize_named_tensors; "
                                        "flattened_bucket: SGLang's, from a trusted local peer)")
            named, infos = [], []
            for i, payload in self._buckets_of_this_rank(serialized_named_tensors):
                try:
                    bucket = self._read_bucket(payload, load_format, allow_pickle)
                except PayloadError as e:
                    raise WeightUpdateError(f"bucket {i}: {e}") from e
                named.extend(bucket)
                infos.extend(TensorInfo(n, tuple(t.shape), t.dtype, f"bucket {i}") for n, t in bucket)
            self._check(infos)
            return lambda: len(self.model.load_weights(named))

        return self._update(prepare, "from tensors", flush_cache, abort_all_requests, weight_version,
                            in_flight_requests, in_flight_timeout)

    def update_weights_from_distributed(self, names: Sequence[str], dtypes: Sequence,
                                            shapes: Sequence[Sequence[int]],
                                            group_name: str = distributed.DEFAULT_GROUP_NAME,
                                            flush_cache: bool = True, abort_all_requests: bool = False,
                                            weight_version: Optional[str] = None,
                                            load_format: Optional[str] = None,
                                            in_flight_requests: Optional[str] = None,
                                            in_flight_timeout: Optional[float] = None) -> dict:
        """Starts the receive and answers once the bucket is received and applied (a
        DeferredUpdate): generation goes on while the trainer has not broadcast."""
        try:
            receiver = self._group(group_name)
            parsed = _parse_bucket(names, dtypes, shapes, load_format)
            nbytes = distributed.bucket_bytes(parsed, shapes, load_format)
            problem = receiver.room_problem(nbytes)
        except WeightUpdateError as e:
            return _refused(e)
        failing = first_failing_rank(problem is None)  # under TP: all ranks receive, or none
        if failing is not None:
            return _refused(WeightUpdateError(problem or f"tensor-parallel rank {failing}: "
                                                         "not enough memory to stage the bucket"))
        received = receiver.receive(names, parsed, shapes, load_format, nbytes)
        source = f"through group {group_name}"

        def apply():  # on the loop, once received on every rank
            receiver.unstage(nbytes)
            error = received.exception()
            failing = first_failing_rank(error is None)
            if failing is not None:
                receiver.broken = (f"rank {failing} of this replica did not receive a bucket: "
                                   f"{error or 'see that rank'}")
                return _refused(WeightUpdateError(
                    f"nothing received from the trainer on group {group_name!r} within "
                    f"{receiver.timeout_s:.0f}s (--dist-timeout), or the receive failed: "
                    f"{error or f'on tensor-parallel rank {failing}'}; the group is out of step "
                    f"now: destroy_weights_update_group, then init_weights_update_group"))
            named = received.result()

            def prepare():
                self._check([TensorInfo(n, tuple(t.shape), t.dtype, f"group {group_name}")
                             for n, t in named])
                return lambda: len(self.model.load_weights(named))

            return self._update(prepare, source, flush_cache, abort_all_requests, weight_version,
                                in_flight_requests, in_flight_timeout, first_in_line=True)

        return self.stage(received, apply, group_name)

    def stage(self, received: Future, apply: Callable[[], object], group_name: str) -> DeferredUpdate:
        """Queue a receive started beside generation: `apply` runs between two steps once it
        ended on every rank, in the order the updates came."""
        deferred = DeferredUpdate(apply, float("inf"), False, 0.0, receiving=received,
                                  group_name=group_name, judged=False)
        self.pending.append(deferred)
        return deferred

    def after_receives(self, apply: Callable[[bool], object]):
        """apply(first_in_line) now, or, while receives are queued, once they were applied
        (a staged push is judged whole: with every tensor it was sent)."""
        if not any(d.receiving is not None for d in self.pending):
            return apply(False)
        deferred = DeferredUpdate(lambda: apply(True), float("inf"), False, 0.0, judged=False)
        self.pending.append(deferred)
        return deferred

    @staticmethod
    def _buckets_of_this_rank(payloads: Sequence) -> list:
        """SGLang's pickled payloads come one per tensor-parallel rank (each with handles to
        tensors on that rank's device): a rank reads its own. rollserve's own buckets hold
        different tensors each: every rank reads them all and takes its slices."""
        indexed = list(enumerate(payloads))
        if group_size() > 1 and len(indexed) == group_size() and all(is_pickled_payload(p) for p in payloads):
            return [indexed[group_rank()]]
        return indexed

    @staticmethod
    def _read_bucket(payload, load_format, allow_pickle: bool):
        if load_format != FLATTENED_BUCKET and not is_pickled_payload(payload):
            return deserialize_named_tensors(payload)
        if not allow_pickle:
            raise PayloadError("SGLang's pickled tensor payloads (verl's MultiprocessingSerializer, "
                               "slime's flattened_bucket) are read only from a trusted peer on this "
                               "host: start the server with --trust-local-pickled-tensors and send "
                               "from 127.0.0.1, or use rollserve's pickle-free buckets")
        return named_tensors_from_pickle(payload, load_format, group_rank())

    # ---- the distributed group -----------------------------------------------------------------
    def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                      world_size: int,
                                      group_name: str = distributed.DEFAULT_GROUP_NAME,
                                      backend: Optional[str] = None) -> dict:
        """Answers a Future: the join waits for the trainer beside generation, not in its way
        (scheduler/process.py sends the answer once it is there)."""
        problem = distributed.check_group_args(master_address, master_port, rank_offset,
                                               world_size, group_name, backend)
        if problem is not None:
            return {"success": False, "message": problem}
        if group_name in self.groups or group_name in self.joining:
            return {"success": False, "message": f"group {group_name!r} already exists; destroy it first"}
        backend = backend or ("nccl" if self.runner.device.type == "cuda" else "gloo")
        timeout_s = self.dist_timeout_s
        rank = int(rank_offset) + group_rank()  # SGLang's layout: the replica's ranks in a row

        def join():
            if backend == "nccl" and self.runner.device.type == "cuda":  # NCCL binds the GPU
                index = self.runner.device.index  # (per thread: set it in the joining one)
                torch.cuda.set_device(torch.cuda.current_device() if index is None else index)
            try:
                return distributed.init_custom_process_group(
                    backend, master_address, master_port, world_size, rank, group_name,
                    timeout_s=timeout_s)
            except BaseException:
                self.joining.discard(group_name)
                raise

        def joined(group) -> dict:
            device = self.runner.device if backend == "nccl" else torch.device("cpu")
            self.groups[group_name] = GroupReceiver(group_name, group, backend, device, timeout_s)
            self.joining.discard(group_name)
            return {"success": True, "message": f"joined {group_name!r} ({backend}) as rank "
                                                f"{rank} of {world_size}"}

        self.joining.add(group_name)
        return distributed.join_in_background(join, joined, f"group {group_name!r} at "
                                              f"{master_address}:{master_port}", timeout_s)

    def destroy_weights_update_group(self, group_name: str = distributed.DEFAULT_GROUP_NAME) -> dict:
        if group_name in self.joining:
            return {"success": False, "message": f"group {group_name!r} is still joining"}
        if group_name not in self.groups:
            return {"success": False, "message": f"no group named {group_name!r}"}
        if any(d.waits_for_trainer() and d.group_name == group_name for d in self.pending):
            return {"success": False, "message": (
                f"group {group_name!r} is still receiving a bucket the trainer has not "
                f"broadcast; it ends within --dist-timeout ({self.dist_timeout_s:.0f}s)")}
        self.groups.pop(group_name).close()
        return {"success": True, "message": f"group {group_name!r} destroyed"}

    def _group(self, group_name: str) -> GroupReceiver:
        if group_name not in self.groups:
            raise WeightUpdateError(f"no group named {group_name!r}; call init_weights_update_group")
        receiver = self.groups[group_name]
        if receiver.broken is not None:
            raise WeightUpdateError(f"group {group_name!r} is broken ({receiver.broken}); "
                                    "destroy_weights_update_group, then init_weights_update_group")
        return receiver

    # ---- inspection and memory -----------------------------------------------------------------
    def get_weights_by_name(self, name: str, truncate_size: int = 100) -> dict:
        if WEIGHTS in self.memory.released:
            return {"success": False, "message": "the weights are released; resume them first"}
        targets = getattr(self.model, "_targets", None) or checkpoint_targets(self.model)
        if name not in targets:
            return {"success": False, "message": f"{type(self.model).__name__} has no parameter "
                                                 f"named {name!r}"}
        value = full_tensor(self.model, name)  # whole under TP: the ranks' slices gathered
        # bounded: a huge truncate_size must not make a body of hundreds of MB and hold the loop
        flat = value.detach().reshape(-1)[:max(0, min(int(truncate_size), MAX_TRUNCATE_SIZE))]
        return {"success": True, "values": flat.float().cpu().tolist()}

    def release_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> dict:
        tags = parse_tags(tags)
        requeued = 0
        if KV_CACHE in tags and KV_CACHE not in self.memory.released:
            requeued = self.scheduler.drop_all_kv()
        for tag in tags:
            self.memory.release(tag)
        logger.info("released %s; forward steps wait until resume_memory_occupation", tags)
        return {"success": True, "message": f"released {tags}; {requeued} running requests were "
                                            "requeued; requests wait until resume_memory_occupation"}

    def resume_memory_occupation(self, tags: Optional[Sequence[str]] = None) -> dict:
        tags = parse_tags(tags)
        for tag in tags:
            self.memory.resume(tag)
        still = sorted(self.memory.released)
        return {"success": True, "message": f"resumed {tags}" + (f"; still released: {still}" if still else "")}

    # ---- the common update -------------------------------------------------------------------
    def _check(self, infos: List[TensorInfo]) -> None:
        check_tensor_infos(infos, self.model.checkpoint_spec(), self.model.skips_checkpoint_name,
                           type(self.model).__name__, require_all=False,
                           rename=getattr(self.model, "canonical_name", None))

    def _update(self, prepare, source: str, flush_cache: bool, abort_all_requests: bool,
                weight_version: Optional[str], in_flight_requests: Optional[str] = None,
                in_flight_timeout: Optional[float] = None, validate_only: bool = False,
                first_in_line: bool = False):
        """The answer, or a DeferredUpdate the scheduler process answers later. validate_only:
        the answer of every check, nothing written (the DP router's first phase).
        first_in_line: run_pending's own (a received bucket): it queues nothing, it goes first."""
        try:
            if WEIGHTS in self.memory.released:
                raise WeightUpdateError("the weights are released; call resume_memory_occupation "
                                        "with tags ['weights'] first")
            if self.runner.pooling is not None:
                raise WeightUpdateError("weight updates support generation models only")
            mode = self._in_flight_mode(in_flight_requests, abort_all_requests)
            timeout = _timeout(in_flight_timeout)
            write, refusal = prepare(), None
        except Exception as e:  # any rank's failure must reach first_failing_rank, not skip it
            write, refusal = None, e
        failing = first_failing_rank(refusal is None)  # under TP: all ranks write, or none
        if refusal is not None:
            return _refused(refusal)
        if failing is not None:
            return _refused(WeightUpdateError(f"tensor-parallel rank {failing} refused the update"))
        if validate_only:
            return {"success": True, "num_paused_requests": 0,
                    "message": f"the update {source} would be accepted (validate_only: nothing "
                               f"written)"}

        def apply() -> dict:
            return self._apply(write, source, mode, flush_cache, weight_version)

        wait = mode == "wait" and self.replica_busy()
        if wait or (self.pending and not first_in_line):  # updates apply in the order they came
            deferred = DeferredUpdate(apply, time.monotonic() + timeout, wait, timeout)
            if not first_in_line:
                self.pending.append(deferred)
            return deferred
        return apply()

    def _in_flight_mode(self, requested: Optional[str], abort_all_requests: bool) -> str:
        if requested is not None and requested not in IN_FLIGHT_MODES:
            raise WeightUpdateError(f"in_flight_requests must be one of {IN_FLIGHT_MODES}, "
                                    f"got {requested!r}")
        if abort_all_requests:
            return "abort"
        if self.pause_mode is None:
            return requested or "wait"
        if requested == "wait" and self.replica_busy():
            raise WeightUpdateError(
                f"generation is paused ({self.pause_mode}) with {self.scheduler.num_requests()} "
                "requests in flight, which cannot finish on the old weights: continue_generation "
                "first, or pass in_flight_requests 'retract', 'in_place', 'restart' or 'abort'")
        # paused: nothing runs, so the pause's own mode says what the requests keep
        return requested or ("in_place" if self.pause_mode in ("in_place", "keep") else "retract")

    def _apply(self, write, source: str, mode: str, flush_cache: bool,
               weight_version: Optional[str]) -> dict:
        if mode == "abort":
            self.send_outputs(self.scheduler.abort_all_now())
        num_paused = 0 if mode in ("abort", "wait") else self.scheduler.num_requests()
        try:
            count = write()
        except Exception as e:  # validated, so only I/O or device trouble lands here
            logger.exception("weight update %s failed while writing", source)
            self.scheduler.weights_changed("retract", True)  # whatever was written, KV is void
            return {"success": False, "num_paused_requests": num_paused,
                    "message": f"failed while writing (the weights may be partly updated): "
                               f"{type(e).__name__}: {e}"}
        if self.runner.device.type == "cuda":
            torch.cuda.synchronize(self.runner.device)  # sources (IPC, buffers) may go away next
        self.send_outputs(self.scheduler.weights_changed(mode, flush_cache))
        if weight_version is not None:
            self.scheduler.weight_version = weight_version
        logger.info("updated %d tensors %s; weight_version %s; in-flight requests: %s", count,
                    source, self.scheduler.weight_version, mode)
        return {"success": True, "num_paused_requests": num_paused,
                "weight_version": self.scheduler.weight_version, "in_flight_requests": mode,
                "message": f"updated {count} tensors {source}"}


def _timeout(value: Optional[float]) -> float:
    if value is None:
        return DEFAULT_IN_FLIGHT_TIMEOUT_S
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = -1.0
    if not value >= 0:  # also NaN
        raise WeightUpdateError(f"in_flight_timeout must be a number of seconds >= 0, got {value!r}")
    return value


def _refused(e: Exception) -> dict:
    return {"success": False, "num_paused_requests": 0,
            "message": f"refused, the old weights keep serving: {e}"}


def _parse_bucket(names, dtypes, shapes, load_format) -> List[torch.dtype]:
    if not all(isinstance(v, (list, tuple)) for v in (names, dtypes, shapes)):
        raise WeightUpdateError("names, dtypes and shapes must be lists")
    if not (len(names) == len(dtypes) == len(shapes)):
        raise WeightUpdateError(f"names, dtypes and shapes must have the same length, got "
                                f"{len(names)}, {len(dtypes)}, {len(shapes)}")
    if load_format not in distributed.LOAD_FORMATS:
        raise WeightUpdateError(f"load_format must be one of {distributed.LOAD_FORMATS}, "
                                f"got {load_format!r}")
    try:
        distributed.check_shapes(shapes)
        return [distributed.parse_dtype(d) for d in dtypes]
    except ValueError as e:
        raise WeightUpdateError(str(e)) from e
