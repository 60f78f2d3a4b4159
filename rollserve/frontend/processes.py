"""Starting and stopping the scheduler and detokenizer processes."""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import tempfile
from dataclasses import dataclass

from rollserve.core.logging_setup import remove_dir
from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.detokenizer import run_detokenizer_process
from rollserve.scheduler.process import run_scheduler_process

logger = logging.getLogger(__name__)


@dataclass
class EngineProcesses:
    scheduler: mp.Process
    detokenizer: mp.Process
    ports: dict
    info: dict  # what the scheduler reported once ready (pool size, context length, ...)
    ipc_dir: str

    def alive(self) -> bool:
        return self.scheduler.is_alive() and self.detokenizer.is_alive()

    def stop(self) -> None:
        for proc in (self.scheduler, self.detokenizer):
            if proc.is_alive():
                proc.terminate()
        for proc in (self.scheduler, self.detokenizer):
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        remove_dir(self.ipc_dir)


def start_engine_processes(args: ServerArgs) -> EngineProcesses:
    """Starts both children of a resolved ServerArgs; each gets only its own layer's config."""
    config = args.scheduler_config()
    ipc_dir = tempfile.mkdtemp(prefix="rollserve-")
    ports = {name: f"ipc://{ipc_dir}/{name}" for name in ("scheduler", "detokenizer", "tokenizer")}
    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    scheduler = ctx.Process(target=run_scheduler_process, name="rollserve-scheduler",
                            args=(config, ports, child_end), daemon=True)
    detokenizer = ctx.Process(target=run_detokenizer_process, name="rollserve-detokenizer",
                              args=(config.tokenizer_path, ports, args.log_level, args.trust_remote_code),
                              daemon=True)
    with _ignore_sigint():  # children stop through terminate(), not through the user's Ctrl-C
        scheduler.start()
        detokenizer.start()
    child_end.close()
    procs = EngineProcesses(scheduler, detokenizer, ports, {}, ipc_dir)
    procs.info = _wait_ready(parent_end, procs)
    return procs


def _wait_ready(pipe, procs: EngineProcesses) -> dict:
    while not pipe.poll(1.0):
        if not procs.scheduler.is_alive():
            procs.stop()
            raise RuntimeError("the scheduler process died while starting; see its log above")
    try:
        info = pipe.recv()
    except EOFError:
        procs.stop()
        raise RuntimeError("the scheduler process died while starting; see its log above")
    if info.get("status") != "ready":
        procs.stop()
        raise RuntimeError(f"the scheduler failed to start: {info.get('message')}\n"
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

