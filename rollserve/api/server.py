"""Launching the HTTP server: resolve the model, start the engine processes (through
the TokenizerManager), serve the app with uvicorn, and stop everything together.

SIGINT/SIGTERM first drain: new requests get a 503, in-flight ones get
--shutdown-grace-period seconds to finish, then each still waiting is answered with a 503
(a stream with an error event and [DONE]); then uvicorn stops, then the scheduler and
detokenizer, and the process exits 0. A second signal skips the wait. If the scheduler or detokenizer dies, /health answers 503 for a moment
and the server exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from typing import List, Optional

import uvicorn

from rollserve.frontend.server_args import ServerArgs
from rollserve.core.logging_setup import configure_logging

logger = logging.getLogger("rollserve.server")

WATCH_INTERVAL_S = 0.5
DEAD_GRACE_S = 2.0  # /health reports the death this long before the server exits
GRACEFUL_SHUTDOWN_S = 3.0  # open connections get this long after a stop signal


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling (it would re-raise the signal after
    shutdown, turning a clean SIGTERM into exit code -15)."""

    def __init__(self, config: uvicorn.Config, where: str):
        super().__init__(config)
        self.where = where

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            logger.info("rollserve is ready and listening on %s", self.where)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before loading the model, so a busy port fails in a second, not a minute."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise SystemExit(f"error: cannot listen on {host}:{port}: {e.strerror}")
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def launch_server(args: ServerArgs) -> int:
    """Runs until stopped; returns the process exit code."""
    from rollserve.api.app import build_state, create_app
    from rollserve.frontend.tokenizer_manager import TokenizerManager
    from rollserve.frontend.startup import resolve_server_args

    configure_logging(args.log_level, prefix="server")
    if args.dp_size > 1 and not args.enable_dp_attention:  # replicas behind the router
        from rollserve.api.dp_launch import launch_data_parallel

        policy = "cache_aware" if args.load_balance_method == "auto" else args.load_balance_method
        return launch_data_parallel(args, launch_server, policy)
    _stop_on_sigterm_while_loading()
    if args.node_rank > 0:  # this node runs TP ranks only; node 0 serves HTTP
        return _run_worker_node(args)
    sock = bind_socket(args.host, args.port)
    if not args.model_path:
        logger.info("no --model-path: serving the embedded default model")
    try:
        args = resolve_server_args(args)
        logger.info("model: %s; starting the scheduler and detokenizer processes", args.model_path)
        tm = TokenizerManager(args)
    except Exception as e:  # no tokenizer there, or the scheduler failed (its log says why)
        logger.error("cannot start: %s: %s", type(e).__name__, e)
        sock.close()
        return 1
    try:
        logger.info("KV pool: %d tokens; context length %d; max input %d tokens",
                    tm.max_total_num_tokens, tm.context_len, tm.max_req_input_len)
        state = build_state(args, tm)
        return asyncio.run(_serve(create_app(state), state, sock))
    finally:
        tm.shutdown()
        sock.close()


async def _serve(app, state, sock: socket.socket) -> int:
    args = state.args
    host = f"[{args.host}]" if ":" in args.host else args.host
    config = uvicorn.Config(app, log_level=args.log_level_http or "warning",
                            access_log=args.log_requests,
                            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, lifespan="off")
    server = _Uvicorn(config, where=f"http://{host}:{args.port}")
    loop = asyncio.get_running_loop()
    state.tm.start()  # its sockets open now, so that /health hears the heartbeat
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, _request_exit, state, server, sig)
    watchdog = loop.create_task(_watch_engine(state, server))
    try:
        await server.serve(sockets=[sock])
    finally:
        watchdog.cancel()
    logger.info("server stopped; stopping the engine processes")
    return state.exit_code


def _request_exit(state, server: uvicorn.Server, sig: int) -> None:
    name = signal.Signals(sig).name
    if state.stopping is not None:  # a second signal: stop waiting
        logger.info("received %s again; stopping now", name)
        state.tm.fail_all(f"the server is shutting down ({name})")
        server.should_exit = server.force_exit = True
        return
    state.stopping = f"the server is shutting down ({name}); no new requests are taken"
    grace = state.args.shutdown_grace_period
    logger.info("received %s; %d requests in flight get %.0fs to finish", name,
                state.tm.num_in_flight(), grace)
    state.drain_task = asyncio.get_running_loop().create_task(_drain(state, server, grace, name))


async def _drain(state, server: uvicorn.Server, grace: float, name: str) -> None:
    deadline = time.monotonic() + grace
    while state.tm.num_in_flight() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    left = state.tm.num_in_flight()
    if left:
        logger.warning("%d requests did not finish within %.0fs; answering them with an error",
                       left, grace)
        state.tm.fail_all(f"the server is shutting down ({name}) and the request did not finish "
                          f"within the {grace:.0f}s grace period")
        for _ in range(50):  # let their handlers write the error answers
            if not state.tm.num_in_flight():
                break
            await asyncio.sleep(0.1)
    server.should_exit = True


async def _watch_engine(state, server: uvicorn.Server) -> None:
    while not server.should_exit:
        await asyncio.sleep(WATCH_INTERVAL_S)
        reason = None if state.stopping else state.why_dead()  # stopping: _drain's to end
        if reason:
            state.dead_reason = reason
            logger.error("%s; /health now answers 503 and the server exits", reason)
            await asyncio.sleep(DEAD_GRACE_S)
            state.exit_code = 1
            server.should_exit = True
            return


def _run_worker_node(args: ServerArgs) -> int:
    """--node-rank > 0: start this node's TP ranks and wait while they follow rank 0."""
    import time

    from rollserve.frontend.processes import start_worker_ranks
    from rollserve.frontend.startup import resolve_server_args

    procs = start_worker_ranks(resolve_server_args(args))
    logger.info("node %d: %d tensor-parallel ranks ready, following node 0 at %s",
                args.node_rank, len(procs), args.dist_init_addr)
    try:
        while all(p.is_alive() for p in procs):
            time.sleep(WATCH_INTERVAL_S)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join(timeout=10)
    return 0 if all(p.exitcode in (0, -15) for p in procs) else 1


def _stop_on_sigterm_while_loading() -> None:
    # Until uvicorn runs, turn SIGTERM into SystemExit so that `finally` blocks stop
    # the child processes instead of leaving them to notice their parent is gone.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


# ---- a server in a child process (benchmarks, tests, eval) ---------------------------------------
def spawn_server(server_argv: List[str], host: str = "127.0.0.1", port: Optional[int] = None,
                 log_file=None):
    """Start `python -m rollserve.launch_server` on `port` (a free one if None);
    returns (Popen, base_url). Wait for it with wait_until_healthy()."""
    import subprocess

    port = port or free_port(host)
    cmd = [sys.executable, "-m", "rollserve.launch_server", "--host", host, "--port", str(port),
           *server_argv]
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT if log_file else None)
    return proc, f"http://{host}:{port}"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until_healthy(base_url: str, proc, timeout: float = 300.0, api_key: Optional[str] = None) -> None:
    import time

    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
        try:
            if httpx.get(f"{base_url}/health", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the server at {base_url} was not healthy within {timeout:.0f}s")
