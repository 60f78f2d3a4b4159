"""`rollserve <command>`: serve (the HTTP server); more commands (eval, ...) plug in
through COMMANDS."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional


def _add_serve(sub) -> None:
    from rollserve.frontend.server_args import add_server_args

    parser = sub.add_parser("serve", help="start the HTTP server (SGLang-native and OpenAI API)",
                            description="Start the HTTP server (http://127.0.0.1:30000 by "
                                        "default). Flag names follow SGLang's; every SGLang flag "
                                        "is known: implemented, accepted with no effect, or "
                                        "refused with the reason (docs/server.md has the table).")
    add_server_args(parser)


def _run_serve(namespace: argparse.Namespace) -> int:
    from rollserve.api.server import launch_server
    from rollserve.frontend.server_args import server_args_from_cli

    return launch_server(server_args_from_cli(namespace))


def _add_eval(sub) -> None:
    from rollserve.eval.cli import add_eval_parser

    add_eval_parser(sub)


def _run_eval(namespace: argparse.Namespace) -> int:
    from rollserve.eval.cli import run_eval

    return run_eval(namespace)


def _add_router(sub) -> None:
    from rollserve.api.dp_launch import add_router_args

    parser = sub.add_parser("router", help="route requests over several servers (data parallel)",
                            description="One endpoint in front of rollserve servers: generation "
                                        "goes to one worker (round_robin, shortest_queue or "
                                        "cache_aware), weight updates and cache flushes to all.")
    add_router_args(parser)


def _run_router(namespace: argparse.Namespace) -> int:
    from rollserve.api.dp_launch import run_router_cli

    return run_router_cli(namespace)


def _add_convert(sub) -> None:
    from rollserve.convert import add_convert_args

    parser = sub.add_parser("convert", help="re-shard a checkpoint into per-rank files (TP)",
                            description="Write one file per tensor-parallel rank, read back with "
                                        "rollserve serve --tp-size N --load-format sharded_state.")
    add_convert_args(parser)


def _run_convert(namespace: argparse.Namespace) -> int:
    from rollserve.convert import run_convert

    return run_convert(namespace)


# name -> (add the subcommand's parser, run it and return the exit code)
COMMANDS: Dict[str, tuple] = {
    "serve": (_add_serve, _run_serve),
    "eval": (_add_eval, _run_eval),
    "router": (_add_router, _run_router),
    "convert": (_add_convert, _run_convert),
}


def build_parser() -> argparse.ArgumentParser:
    from rollserve.version import __version__

    parser = argparse.ArgumentParser(prog="rollserve",
                                     description="rollserve: an LLM inference engine for RL rollouts")
    parser.add_argument("--version", action="version", version=f"rollserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # SGLang's --config FILE: its flags go first, so the command line wins
        from rollserve.frontend.server_args import expand_config_argv

        argv = expand_config_argv(argv, insert_at=1)
    namespace = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = COMMANDS[namespace.command][1]
    sys.exit(run(namespace))


if __name__ == "__main__":
    main()
