"""`python -m rollserve.launch_server --model-path ...`, as with SGLang."""

from __future__ import annotations

import argparse
import sys

from rollserve.api.server import launch_server
from rollserve.frontend.server_args import add_server_args, server_args_from_cli


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m rollserve.launch_server",
                                     description="Start the rollserve HTTP server.")
    add_server_args(parser)
    sys.exit(launch_server(server_args_from_cli(parser.parse_args())))


if __name__ == "__main__":
    main()
