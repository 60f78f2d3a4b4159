"""The scheduler side of TRL's weight pushes (api/trl_routes.py has the HTTP side).

Two protocols, one staging area:
* vLLM's weight-transfer engine (TRL's VLLMClient today, and its async GRPO):
  init_weight_transfer_engine joins a group where the trainer is rank 0 and hosts the
  rendezvous; start_weight_update opens a staged update; each update_weights call
  receives the announced tensors (vLLM's packed chunks, or one broadcast per tensor);
  finish_weight_update applies everything staged at once.
* `trl vllm-serve` (TRL up to 0.2x): init_communicator makes the engine rank 0 and the
  store's host, the trainer the last rank; each update_named_param receives one tensor;
  the update is applied at reset_prefix_cache, which TRL calls right after pushing
  every parameter (and at close_communicator).

Staging is what makes a push atomic like rollserve's own updates: tensors are received
(a broadcast must always find its partner, even for a tensor that will be refused),
kept aside, then validated as a whole against the model and written between two steps
through WeightSyncService (running requests paused, KV recomputed, version set), or
refused whole with the old weights serving.

Groups, for vLLM's protocol: vLLM's own (a trainer with vLLM installed: its
StatelessProcessGroup and PyNccl, joined by weight_sync/vllm_group.py, NCCL only), or a
torch.distributed group (gloo between CPU processes, NCCL on CUDA) whose trainer half is
rollserve's (weight_sync/trl_trainer.py; init_info says group "torch"). `trl vllm-serve`'s
is always a torch.distributed group. Only the transport differs: the receives, staging
and validation are the same for all.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rollserve.weight_sync import distributed
from rollserve.weight_sync.packed import DEFAULT_BUFFER_SIZE_BYTES, receive_packed, tensor_nbytes
from rollserve.weight_sync.staged_receive import GroupReceiver
from rollserve.weight_sync.validate import TensorInfo, WeightUpdateError
from rollserve.weight_sync.vllm_group import decode_unique_id_b64, fetch_unique_id, join_vllm_group

logger = logging.getLogger(__name__)
VLLM_GROUP = "vllm_weight_transfer"
LEGACY_STORE_PREFIX = "client2server"  # what trl vllm-serve's store-based group uses
LEGACY_GROUP = "trl_communicator"
CONTROL_CALLS = ("weight_transfer_info", "vllm_init_transfer", "start_staged_update",
                 "vllm_update_weights", "finish_staged_update", "trl_init_communicator",
                 "trl_receive_param", "trl_check_param", "trl_close_communicator")


class Staging:
    """Tensors received for one update, not yet applied."""

    def __init__(self, source: str):
        self.source = source
        self.named: List[Tuple[str, torch.Tensor]] = []
        self.errors: List[str] = []

    def add(self, named: Sequence[Tuple[str, torch.Tensor]]) -> None:
        self.named.extend(named)


class TrainerProtocols:
    def __init__(self, weight_sync):
        self.weight_sync = weight_sync
        self.group = None  # (process group, backend, src rank)
        # the last update_weights' (names, dtype_names, shapes): empty lists reuse them
        self.last_update_meta = None
        self.receiver: Optional[GroupReceiver] = None  # receives beside generation
        self.joining: Optional[threading.Thread] = None
        self.join_error: Optional[str] = None
        self.staging: Optional[Staging] = None
        self._store = None

    @property
    def device(self) -> torch.device:
        runner = self.weight_sync.runner
        return runner.device if self.group and self.group[1] == "nccl" else torch.device("cpu")

    def _receiver(self, name: str, group, backend: str) -> GroupReceiver:
        device = self.weight_sync.runner.device if backend == "nccl" else torch.device("cpu")
        return GroupReceiver(name, group, backend, device, self.weight_sync.dist_timeout_s)

    def _receiving(self) -> Optional[dict]:
        """The refusal of a new group while a push to the current one is still queued."""
        if any(d.receiving is not None and d.group_name in (VLLM_GROUP, LEGACY_GROUP)
               for d in self.weight_sync.pending):
            return {"success": False, "message": "a weight push is still being received; the "
                    f"group is replaced after it (within --dist-timeout, "
                    f"{self.weight_sync.dist_timeout_s:.0f}s)"}
        return None

    def _stage(self, name: str, nbytes: int, receive, source: str) -> dict:
        """Receive beside generation (staged_receive.py), then add to the staged push between
        two steps; the answer comes once it is in (weight_sync/service.py's stage)."""
        receiver = self.receiver
        problem = receiver.broken or receiver.room_problem(nbytes)
        if problem is not None:
            return {"success": False, "message": problem}
        received = receiver.run(receive, nbytes)

        def apply() -> dict:
            receiver.unstage(nbytes)
            if received.exception() is not None:
                receiver.broken = (f"a receive failed or waited over --dist-timeout "
                                   f"({receiver.timeout_s:.0f}s): {received.exception()}; the "
                                   f"group is out of step with the trainer: open it again")
                # the push lacks this part: it is refused whole at finish, not applied in part
                (self.staging or self._open(source)).errors.append(receiver.broken)
                return {"success": False, "message": receiver.broken}
            named = received.result()
            staging = self.staging or self._open(source)
            staging.add(named)
            try:  # judged now too, so the caller learns of a bad tensor at once
                self.weight_sync._check(_infos(named, source))
            except WeightUpdateError as e:
                staging.errors.append(str(e))
                return {"success": False, "message": f"received, but it will be refused: {e}"}
            return {"success": True, "message": f"received {len(named)} tensors"}

        return self.weight_sync.stage(received, apply, name)

    def _backend(self, backend: Optional[str]) -> str:
        backend = backend or ("nccl" if self.weight_sync.runner.device.type == "cuda" else "gloo")
        if backend not in ("gloo", "nccl"):
            raise WeightUpdateError(f"backend must be gloo or nccl, got {backend!r}")
        return backend

    def control_calls(self) -> dict:
        """This service's control calls by name (the scheduler process's registry takes them)."""
        return {name: getattr(self, name) for name in CONTROL_CALLS}

    def weight_transfer_info(self) -> dict:
        runner = self.weight_sync.runner
        return {"success": True, "dtype": str(runner.dtype),
                "backend": "nccl" if runner.device.type == "cuda" else "gloo"}

    # ---- vLLM's weight-transfer engine ---------------------------------------------------------
    def vllm_init_transfer(self, master_address: str, master_port: int, rank_offset: int,
                               world_size: int, backend: Optional[str] = None,
                               group: Optional[str] = None,
                               nccl_unique_id_b64: Optional[str] = None) -> dict:
        """group: "vllm" (vLLM's own StatelessProcessGroup and PyNccl, what a trainer with
        vLLM opens; weight_sync/vllm_group.py) or "torch" (a torch.distributed group, what
        rollserve's trainer helpers open: weight_sync/trl_trainer.py). Unnamed: torch when
        init_info names a backend (vLLM's never does), else vllm. nccl_unique_id_b64 instead
        of master_address / master_port: vLLM's torch-free rendezvous (the trainer minted
        the NCCL id itself and shares it here; no store), vLLM's group only."""
        group = group or ("torch" if backend else "vllm")
        unique_id, problem = None, None
        if nccl_unique_id_b64 is not None:
            try:
                unique_id = decode_unique_id_b64(nccl_unique_id_b64)
            except ValueError as e:
                problem = str(e)
            if problem is None and (master_address is not None or master_port is not None):
                problem = ("init_info: pass nccl_unique_id_b64 or master_address / "
                           "master_port, not both")
            if problem is None and group != "vllm":
                problem = "nccl_unique_id_b64 is vLLM's NCCL rendezvous: it needs group vllm"
            # the address is not used: check the ranks with a placeholder rendezvous
            master_address, master_port = "unique-id", 1
        if problem is None:
            problem = distributed.check_group_args(master_address, master_port, rank_offset,
                                                   world_size, VLLM_GROUP, backend)
        if problem is None:
            problem = self._vllm_group_problem(group, backend)
        if problem is not None:
            return {"success": False, "message": problem}
        refused = self._receiving()
        if refused is not None:
            return refused
        if self.group is not None:
            self._destroy()
        timeout_s = self.weight_sync.dist_timeout_s
        self.last_update_meta = None  # vLLM forgets it at every init too
        if group == "vllm":
            return self._join_vllm_group(master_address, master_port, rank_offset, world_size,
                                         unique_id)
        backend = self._backend(backend)

        def joined(group) -> dict:
            self.group = (group, backend, 0)
            self.receiver = self._receiver(VLLM_GROUP, group, backend)
            return {"success": True, "message": f"joined the weight-transfer group ({backend}) "
                                                f"as rank {rank_offset} of {world_size}"}

        # beside generation, as init_weights_update_group (weight_sync/service.py)
        return distributed.join_in_background(
            lambda: distributed.init_custom_process_group(
                backend, master_address, master_port, world_size, rank_offset, VLLM_GROUP,
                timeout_s=timeout_s),
            joined, f"the weight-transfer group at {master_address}:{master_port}", timeout_s)

    def _vllm_group_problem(self, group: Optional[str], backend: Optional[str]) -> Optional[str]:
        if group not in ("vllm", "torch"):
            return f"group must be vllm or torch, got {group!r}"
        if group == "vllm" and backend not in (None, "nccl"):
            return f"vLLM's weight-transfer group is NCCL; backend {backend!r} needs group torch"
        if group == "vllm" and self.weight_sync.runner.device.type != "cuda":
            return ("init_info comes from vLLM's own trainer_init (an NCCL group), and this "
                    "engine runs on the CPU: push with rollserve's helpers instead "
                    "(examples/trl/rollserve_trl.py, which sends group torch)")
        return None

    def _join_vllm_group(self, master_address: str, master_port: int, rank_offset: int,
                         world_size: int, unique_id: Optional[bytes] = None):
        device, timeout_s = self.weight_sync.runner.device, self.weight_sync.dist_timeout_s
        # with a pre-shared id there is no store: every rank enters ncclCommInitRank at once
        fetch = fetch_unique_id if unique_id is None else (lambda *args: unique_id)
        where = ("a pre-shared NCCL id" if unique_id is not None
                 else f"{master_address}:{master_port}")

        def joined(group) -> dict:
            self.group = (group, "nccl", 0)
            self.receiver = GroupReceiver(VLLM_GROUP, group, "nccl", device, timeout_s)
            return {"success": True, "message": f"joined vLLM's weight-transfer group (NCCL) "
                                                f"as rank {group.rank} of {world_size}"}

        return distributed.join_in_background(
            lambda: join_vllm_group(master_address, master_port, rank_offset, world_size,
                                    device, timeout_s, fetch=fetch),
            joined, f"vLLM's weight-transfer group at {where}", timeout_s)

    def start_staged_update(self, source: str) -> dict:
        if self.staging is not None and self.staging.named:
            logger.warning("a staged update of %d tensors was dropped by a new start",
                           len(self.staging.named))
        self.staging = Staging(source)
        return {"success": True, "message": "weight update started"}

    def vllm_update_weights(self, names: List[str], dtype_names: List[str],
                                shapes: List[List[int]], packed: bool = True,
                                buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES) -> dict:
        """Receive one announced bucket into the staging area (opened if none is). Three
        empty lists reuse the previous call's names, dtypes and shapes (vLLM's rule: a trainer
        that pushes the same parameters every round announces them once after each init)."""
        if self.group is None:
            return {"success": False, "message": "no weight-transfer group: call "
                                                 "/init_weight_transfer_engine first"}
        if not names and not dtype_names and not shapes and self.last_update_meta is not None:
            names, dtype_names, shapes = self.last_update_meta
        if not (len(names) == len(dtype_names) == len(shapes)):
            # the trainer's broadcast cannot be matched; nothing is received, say why
            return {"success": False, "message": f"names, dtype_names and shapes differ in length "
                                                 f"({len(names)}, {len(dtype_names)}, {len(shapes)})"}
        try:
            dtypes = [distributed.parse_dtype(d) for d in dtype_names]
            shapes = distributed.check_shapes(shapes)
        except ValueError as e:
            return {"success": False, "message": str(e)}
        _, _, src = self.group
        names, buffer_size = list(names), int(buffer_size_bytes)
        if names:
            self.last_update_meta = (names, list(dtype_names), shapes)

        def receive(group, device, timeout_s):
            if packed:
                return receive_packed(group, names, dtypes, shapes, device, src, buffer_size,
                                      timeout_s)
            return distributed.receive_named_tensors(group, names, dtypes, shapes, device,
                                                     src=src, timeout_s=timeout_s)

        return self._stage(VLLM_GROUP, distributed.bucket_bytes(dtypes, shapes), receive,
                           "update_weights")

    def finish_staged_update(self, weight_version: Optional[str] = None):
        """Apply everything staged since start as one update (validated whole first), after
        the receives still queued (TRL calls it right after its last broadcast)."""
        return self.weight_sync.after_receives(lambda first: self._finish(weight_version, first))

    def _finish(self, weight_version: Optional[str], first_in_line: bool):
        staging, self.staging = self.staging, None
        if staging is None or not staging.named:
            return {"success": True, "message": "nothing staged: no weights changed",
                    "num_paused_requests": 0}
        named, errors = staging.named, staging.errors

        def prepare():
            if errors:
                raise WeightUpdateError(errors[0])
            self.weight_sync._check(_infos(named, staging.source))
            return lambda: len(self.weight_sync.model.load_weights(named))

        return self.weight_sync._update(prepare, f"through {staging.source}", True, False,
                                        weight_version, first_in_line=first_in_line)

    # ---- trl vllm-serve (legacy) ----------------------------------------------------------------
    def trl_init_communicator(self, host: str, port: int, world_size: int,
                                  backend: Optional[str] = None) -> dict:
        """Host the group's store and join as rank 0 in a thread: TRL opens its side only
        after this call has answered."""
        refused = self._receiving()
        if refused is not None:
            return refused
        if self.group is not None or (self.joining and self.joining.is_alive()):
            self._destroy()
        backend = self._backend(backend)
        world_size, port = int(world_size), int(port)
        if not 1 <= port <= 65535:
            return {"success": False, "message": f"port must be in 1..65535, got {port}"}
        if world_size != 2:
            return {"success": False, "message": f"world_size must be 2 (this engine is one rank, "
                                                 f"the trainer the other), got {world_size}"}
        self.join_error = None
        receiver = self.receiver = self._receiver(LEGACY_GROUP, None, backend)

        def join():
            try:
                store = dist.TCPStore(host or "0.0.0.0", port, world_size, is_master=True,
                                      timeout=datetime.timedelta(seconds=self.weight_sync.dist_timeout_s))
                group = distributed.group_on_store(
                    backend, dist.PrefixStore(LEGACY_STORE_PREFIX, store), 0, world_size,
                    LEGACY_GROUP, self.weight_sync.dist_timeout_s)
                self.group = (group, backend, world_size - 1)
                receiver.group = group
                self._store = store  # the trainer's side connects to it; keep it alive
            except Exception as e:  # reported by the next update_named_param
                self.join_error = f"{type(e).__name__}: {e}"
                logger.exception("init_communicator failed")

        self.joining = threading.Thread(target=join, daemon=True, name="trl-communicator")
        self.joining.start()
        return {"success": True, "message": f"waiting for the trainer on port {port} ({backend})"}

    def trl_receive_param(self, name: str, dtype: str, shape: List[int]) -> dict:
        """Receive one tensor the trainer broadcasts right after /update_named_param/ answered
        (beside generation: the join, the broadcast and TRL's barrier are waited for in the
        group's thread)."""
        if self.receiver is None:
            return {"success": False, "message": "no communicator: call init_communicator"}
        try:
            parsed = distributed.parse_dtype(dtype)
            shape = distributed.check_shapes([shape])[0]
        except ValueError as e:
            return {"success": False, "message": str(e)}
        joining = self.joining

        def receive(_, device, timeout_s):
            if joining is not None:
                joining.join(self.weight_sync.dist_timeout_s)  # (it gives up by then too)
            if self.group is None:
                raise RuntimeError(f"no communicator: {self.join_error or 'the trainer did not join'}")
            group, _, src = self.group
            tensor = torch.empty(shape, dtype=parsed, device=device)
            distributed.wait_all([dist.broadcast(tensor, group=group, group_src=src, async_op=True)],
                                 timeout_s)
            distributed.wait_all([dist.barrier(group=group, async_op=True)], timeout_s)
            return [(name, tensor)]

        return self._stage(LEGACY_GROUP, tensor_nbytes(parsed, shape), receive, "init_communicator")

    def trl_check_param(self, name: str, dtype: str, shape: List[int]) -> dict:
        """Judge a tensor before the trainer sends it (so a refusal reaches the client first)."""
        try:
            parsed = distributed.parse_dtype(dtype)
            self.weight_sync._check([TensorInfo(name, tuple(int(n) for n in shape), parsed,
                                                "update_named_param")])
        except (ValueError, WeightUpdateError) as e:
            return {"success": False, "message": str(e)}
        if self.group is None and not (self.joining and self.joining.is_alive()):
            return {"success": False, "message": "no communicator: call /init_communicator/ first"}
        if self.receiver is not None and self.receiver.broken:  # before TRL broadcasts
            return {"success": False, "message": self.receiver.broken}
        return {"success": True, "message": "ok"}

    def trl_close_communicator(self):
        def close(first_in_line: bool):
            result = self._finish(None, first_in_line)
            self._destroy()  # after the receives: none uses the group any more
            return result

        return self.weight_sync.after_receives(close)

    def _open(self, source: str) -> Staging:
        self.staging = Staging(source)
        return self.staging

    def _destroy(self) -> None:
        if self.joining is not None:
            self.joining.join(timeout=1)
            self.joining = None
        if self.receiver is not None:
            self.receiver.close()  # and its group
            self.receiver = None
        elif self.group is not None:
            distributed.destroy_process_group(self.group[0])
        self.group = None
        self._store = None


def _infos(named, source: str) -> List[TensorInfo]:
    return [TensorInfo(n, tuple(t.shape), t.dtype, source) for n, t in named]
