"""`rollserve serve --dp-size N` and `rollserve router`: the router (frontend/router.py) on
the server's port, in front of N rollserve servers started here (one per replica, each with
its own --tp-size ranks on its own devices) or of servers started elsewhere."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import socket
import time
from typing import Callable, List, Optional, Sequence

from rollserve.frontend.router import HEALTH_INTERVAL_S, Router
from rollserve.frontend.router_policy import POLICIES
from rollserve.frontend.server_args import ServerArgs

logger = logging.getLogger("rollserve.router")

WORKER_START_TIMEOUT_S = 600.0


def run_router(router: Router, host: str, port: int, log_level: str = "info",
               health_interval_s: float = HEALTH_INTERVAL_S) -> int:
    import uvicorn

    from rollserve.api.router_app import create_router_app

    app = create_router_app(router, health_interval_s)
    logger.info("router (%s) on http://%s:%d in front of %s", router.policy_name, host, port,
                ", ".join(router.workers))
    uvicorn.run(app, host=host, port=port, log_level="warning" if log_level == "info" else log_level)
    return 0


def _worker_main(serve: Callable[[ServerArgs], int], args: ServerArgs) -> None:
    import sys

    from rollserve.core.logging_setup import exit_with_parent

    exit_with_parent()  # the router's process owns the replicas
    sys.exit(serve(args))


def launch_data_parallel(args: ServerArgs, serve: Callable[[ServerArgs], int],
                         policy: str = "cache_aware") -> int:
    """Starts args.dp_size replicas (each `serve(its args)`, api/server.launch_server) on
    free local ports, then the router on args.port."""
    ctx = mp.get_context("spawn")
    procs, urls = [], []
    for i in range(args.dp_size):
        port = _free_port()
        replica = dataclasses.replace(args, dp_size=1, host="127.0.0.1", port=port,
                                      base_gpu_id=args.base_gpu_id + i * args.tp_size)
        # not a daemon: a replica starts its own scheduler processes
        proc = ctx.Process(target=_worker_main, args=(serve, replica), name=f"rollserve-dp{i}")
        proc.start()
        procs.append(proc)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        wait_for(urls, WORKER_START_TIMEOUT_S, procs, args.api_key)
        logger.info("%d data-parallel replicas ready: %s", len(urls), ", ".join(urls))
        router = Router(urls, policy=policy, api_key=args.api_key)
        return run_router(router, args.host, args.port, args.log_level)
    except Exception as e:
        logger.error("data-parallel start failed: %s", e)
        return 1
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- rollserve router -------------------------------------------------------------------------
def add_router_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker-urls", nargs="+", default=[], metavar="URL",
                        help="the rollserve (or SGLang) servers to route to (more can join "
                             "through /add_worker)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=30000)
    parser.add_argument("--policy", choices=POLICIES, default="cache_aware",
                        help="how a request's worker is chosen (default: cache_aware)")
    parser.add_argument("--cache-threshold", type=float, default=0.5,
                        help="cache_aware: share of a request's text a worker must hold cached "
                             "to get it (default: 0.5)")
    parser.add_argument("--balance-abs-threshold", type=int, default=32,
                        help="cache_aware: balance by load when the busiest worker has this many "
                             "more requests in flight than the idlest (default: 32)...")
    parser.add_argument("--balance-rel-threshold", type=float, default=1.0001,
                        help="...and this many times as many (default: 1.0001)")
    parser.add_argument("--health-check-interval-secs", type=float, default=HEALTH_INTERVAL_S)
    parser.add_argument("--api-key", default=None, help="the workers' API key")
    parser.add_argument("--log-level", default="info")


def router_from_args(ns: argparse.Namespace) -> Router:
    kwargs = {}
    if ns.policy == "cache_aware":
        kwargs = dict(cache_threshold=ns.cache_threshold,
                      balance_abs_threshold=ns.balance_abs_threshold,
                      balance_rel_threshold=ns.balance_rel_threshold)
    return Router(ns.worker_urls, policy=ns.policy, api_key=ns.api_key, **kwargs)


def run_router_cli(ns: argparse.Namespace) -> int:
    from rollserve.core.logging_setup import configure_logging

    configure_logging(ns.log_level, prefix="router")
    if not 0 <= ns.cache_threshold <= 1:
        raise SystemExit(f"error: --cache-threshold: must be in [0, 1], got {ns.cache_threshold}")
    return run_router(router_from_args(ns), ns.host, ns.port, ns.log_level,
                      ns.health_check_interval_secs)


def wait_for(urls: List[str], timeout_s: float = 60.0, procs: Sequence[mp.Process] = (),
             api_key: Optional[str] = None) -> None:
    """Blocks until every URL answers /health; RuntimeError if one of `procs` exits first."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                if httpx.get(url + "/health", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            dead = [p.name for p in procs if p.exitcode is not None]
            if dead:
                raise RuntimeError(f"replica {', '.join(dead)} exited while starting; see its log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} is not healthy after {timeout_s:.0f}s")
            time.sleep(0.25)
