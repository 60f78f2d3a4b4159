"""A local `rollserve serve` in a child process, stopped with everything it started."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional, Sequence

logger = logging.getLogger("rollserve.rollout")

STOP_TIMEOUT_S = 30.0


def server_argv(model_path: Optional[str], server_args: Sequence[str]) -> list:
    if isinstance(server_args, str):
        raise TypeError("server_args: give a list of arguments, e.g. ['--max-total-tokens', '8192']")
    return ([] if model_path is None else ["--model-path", str(model_path)]) + list(server_args)


@contextlib.contextmanager
def launched_server(model_path: Optional[str] = None, server_args: Sequence[str] = (),
                    log_file=None, startup_timeout: float = 600.0,
                    api_key: Optional[str] = None) -> Iterator[str]:
    """Yields the base URL of a server on a free port once /health answers."""
    from rollserve.api.server import spawn_server, wait_until_healthy

    argv = server_argv(model_path, server_args)
    if api_key:
        argv += ["--api-key", api_key]
    proc, url = spawn_server(argv, log_file=log_file)
    try:
        wait_until_healthy(url, proc, timeout=startup_timeout, api_key=api_key)
        logger.info("server ready at %s (pid %d)", url, proc.pid)
        yield url
    finally:
        stop_process_tree(proc)


def stop_process_tree(proc, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM (the server stops its scheduler and detokenizer), then SIGKILL for
    the server or any child still alive after `timeout`."""
    import subprocess

    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=timeout if proc.returncode == 0 else 1.0)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5.0)
