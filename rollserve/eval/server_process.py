"""Processes the evaluation owns: a server it launches, and the lock on its output folder.

The launched server's life is tied to the evaluator's:
* it gets a parent-death signal (Linux prctl PR_SET_PDEATHSIG, set in the child before
  exec): SIGTERM when the evaluator dies, even by kill -9, and SIGTERM makes the server
  stop its scheduler and detokenizer;
* it runs in a session and process group of its own, so a Ctrl-C at the terminal reaches
  the evaluator only (no asyncio tracebacks from the server), which then stops the whole
  group itself;
* its output goes to a log file, not through the progress display;
* its pid and group are written to OUTPUT_DIR/server.json; a later start stops a group
  left there by an evaluator that died on a system without parent-death signals.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import signal
import subprocess
import sys
from typing import Iterator, Optional, Sequence

from rollserve.core.sampling_params import InvalidRequest

logger = logging.getLogger("rollserve.eval")

PR_SET_PDEATHSIG = 1
SERVER_FILE = "server.json"
STOP_TIMEOUT_S = 30.0
LOCK_FILE = ".watch.lock"


def _parent_death_signal(parent: int):
    """preexec_fn for the child: SIGTERM when `parent` dies (Linux); no-op elsewhere."""
    libc = None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

    def preexec() -> None:  # runs in the forked child: async-signal-safe work only
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn_owned_server(argv: Sequence[str], log_path: str):
    """Starts `python -m rollserve.launch_server ARGV` owned by this process; returns Popen."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "rollserve.launch_server", *argv],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True,
                                preexec_fn=_parent_death_signal(os.getpid()))


def stop_group(proc, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the server's process group (server, scheduler, detokenizer), SIGKILL to
    whatever is left after `timeout`."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
    _reap_group(proc.pid, timeout=5.0)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _reap_group(pgid: int, timeout: float) -> None:
    """Waits for the group's other members (engine processes) and kills stragglers."""
    import psutil

    members = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
    _, alive = psutil.wait_procs(members, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def stop_leftover_server(output_dir: str) -> None:
    """Stops a server group recorded by an evaluator that died without stopping it."""
    import psutil

    path = os.path.join(output_dir, SERVER_FILE)
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return
    pid, created = info.get("pid"), info.get("create_time")
    try:
        proc = psutil.Process(pid)
        same = created is None or abs(proc.create_time() - created) < 1.0
    except (psutil.Error, TypeError, ValueError):
        same = False
    if same:
        logger.warning("stopping the server (pid %s) a previous evaluator left running", pid)
        _signal_group(pid, signal.SIGTERM)
        with contextlib.suppress(psutil.Error):
            proc.wait(STOP_TIMEOUT_S)
        _signal_group(pid, signal.SIGKILL)
        _reap_group(pid, timeout=5.0)
    with contextlib.suppress(OSError):
        os.remove(path)


@contextlib.contextmanager
def owned_server(model_path: Optional[str], server_args: Sequence[str], *, output_dir: str,
                 port: Optional[int] = None, host: str = "127.0.0.1",
                 api_key: Optional[str] = None, startup_timeout: float = 600.0) -> Iterator[str]:
    """Launches a server owned by this process; yields its base URL once /health answers,
    stops its process group on exit. Its output goes to OUTPUT_DIR/server.log."""
    import psutil

    from rollserve.api.server import free_port, wait_until_healthy
    from rollserve.rollout.launch import server_argv

    stop_leftover_server(output_dir)
    port = port or free_port(host)
    argv = ["--host", host, "--port", str(port), *server_argv(model_path, server_args)]
    if api_key:
        argv += ["--api-key", api_key]
    log_path = os.path.join(output_dir, "server.log")
    proc = spawn_owned_server(argv, log_path)
    record = os.path.join(output_dir, SERVER_FILE)
    with open(record, "w") as f:
        json.dump({"pid": proc.pid, "pgid": proc.pid, "port": port, "log": log_path,
                   "create_time": psutil.Process(proc.pid).create_time()}, f)
    url = f"http://{host}:{port}"
    try:
        try:
            wait_until_healthy(url, proc, timeout=startup_timeout, api_key=api_key)
        except (RuntimeError, TimeoutError) as e:
            raise InvalidRequest("launch", f"{e}; its log: {log_path}") from None
        logger.info("server ready at %s (pid %d, log %s)", url, proc.pid, log_path)
        yield url
    finally:
        stop_group(proc)
        with contextlib.suppress(OSError):
            os.remove(record)


@contextlib.contextmanager
def output_lock(output_dir: str) -> Iterator[None]:
    """One writer per output folder: a second watcher on it would score twice. The lock
    (flock) goes with the process, also on kill -9."""
    import fcntl

    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_FILE)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise InvalidRequest("output_dir", f"{output_dir} is in use by another eval watch "
                                           f"(pid {holder})") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        handle.close()
