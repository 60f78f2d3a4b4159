"""Starting and stopping the scheduler and detokenizer processes.

Under tensor parallelism one scheduler process runs per rank of this node (rank 0, the
one the front end talks to, on node 0); they meet at --dist-init-addr (default: a free
port on 127.0.0.1) and share one seed so that they sample alike (scheduler/tp_sync.py).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import socket
import tempfile
from dataclasses import dataclass, field, replace
from typing import List

from rollserve.core.logging_setup import remove_dir
from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.detokenizer import run_detokenizer_process
from rollserve.scheduler.process import run_scheduler_process
from rollserve.scheduler.tp_sync import with_shared_seed

logger = logging.getLogger(__name__)


@dataclass
class EngineProcesses:
    scheduler: mp.Process
    detokenizer: mp.Process
    ports: dict
    info: dict  # what the scheduler reported once ready (pool size, context length, ...)
    ipc_dir: str
    tp_workers: List[mp.Process] = field(default_factory=list)  # TP ranks 1.. of this node

    def alive(self) -> bool:
        return all(p.is_alive() for p in self._all())

    def _all(self) -> List[mp.Process]:
        return [self.scheduler, self.detokenizer, *self.tp_workers]

    def stop(self) -> None:
        for proc in self._all():
            if proc.is_alive():
                proc.terminate()
        for proc in self._all():
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        remove_dir(self.ipc_dir)


def start_engine_processes(args: ServerArgs) -> EngineProcesses:
    """Starts the children of a resolved ServerArgs (node 0 of a TP replica, or the only
    node); each gets only its own layer's config."""
    config = tp_config(args)
    ipc_dir = tempfile.mkdtemp(prefix="rollserve-")
    ports = {name: f"ipc://{ipc_dir}/{name}" for name in ("scheduler", "detokenizer", "tokenizer")}
    ctx = mp.get_context("spawn")
    ranks = _start_ranks(ctx, config, ports, node_ranks(args))
    detokenizer = ctx.Process(target=run_detokenizer_process, name="rollserve-detokenizer",
                              args=(config.tokenizer_path, ports, args.log_level, args.trust_remote_code),
                              daemon=True)
    with _ignore_sigint():
        detokenizer.start()
    procs = EngineProcesses(ranks[0][0], detokenizer, ports, {}, ipc_dir,
                            tp_workers=[p for p, _ in ranks[1:]])
    procs.info = _wait_all_ready(ranks, procs)
    return procs


def start_worker_ranks(args: ServerArgs) -> List[mp.Process]:
    """A node other than 0 (--node-rank > 0): only its TP ranks, which follow rank 0."""
    config = tp_config(args)
    ranks = _start_ranks(mp.get_context("spawn"), config, {}, node_ranks(args))
    procs = [p for p, _ in ranks]
    try:
        _wait_all_ready(ranks, None)
    except RuntimeError:
        for p in procs:
            p.kill()
        raise
    return procs


def tp_config(args: ServerArgs):
    """The scheduler config every rank gets: a rendezvous address and a shared seed under TP."""
    config = args.scheduler_config()
    if args.tp_size == 1:
        return config
    if config.executor.dist_init_addr is None:
        config = replace(config, executor=replace(config.executor,
                                                  dist_init_addr=f"127.0.0.1:{_free_port()}"))
    return with_shared_seed(config)


def node_ranks(args: ServerArgs) -> range:
    per_node = args.tp_size // args.nnodes
    return range(args.node_rank * per_node, (args.node_rank + 1) * per_node)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_ranks(ctx, config, ports: dict, ranks: range) -> list:
    """[(process, ready pipe)] of one scheduler process per TP rank."""
    started = []
    for rank in ranks:
        parent_end, child_end = ctx.Pipe(duplex=False)
        name = "rollserve-scheduler" + (f"-tp{rank}" if config.executor.tp_size > 1 else "")
        proc = ctx.Process(target=run_scheduler_process, name=name,
                           args=(config, ports, child_end, rank), daemon=True)
        with _ignore_sigint():  # children stop through terminate(), not through the user's Ctrl-C
            proc.start()
        child_end.close()
        started.append((proc, parent_end))
    return started


def _wait_all_ready(ranks: list, procs) -> dict:
    """Rank 0's ready info (the first of `ranks`) once every rank is ready; any rank's death
    or error stops them all (the others would wait for it in a collective)."""
    infos, pending = {}, dict(enumerate(ranks))
    try:
        while pending:
            for i, (proc, pipe) in list(pending.items()):
                info = _ready_info(pipe, proc)
                if info is not None:
                    infos[i] = info
                    del pending[i]
    except RuntimeError:
        if procs is not None:
            procs.stop()
        for proc, _ in ranks:
            if proc.is_alive():
                proc.kill()
        raise
    return infos[0]


def _ready_info(pipe, proc: mp.Process):
    """The rank's ready info, None while it is still starting; RuntimeError if it failed."""
    died = f"the scheduler process {proc.name} died while starting; see its log above"
    if not pipe.poll(0.5):
        if not proc.is_alive():
            raise RuntimeError(died)
        return None
    try:
        info = pipe.recv()
    except EOFError:
        raise RuntimeError(died)
    if info.get("status") != "ready":
        raise RuntimeError(f"the scheduler ({proc.name}) failed to start: {info.get('message')}\n"
                           f"{info.get('traceback', '')}")
    return info


class _ignore_sigint:
    def __enter__(self):
        try:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread
            self.previous = None

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

