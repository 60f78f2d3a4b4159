"""`python -m rollserve.launch_server --model-path ...`, as with SGLang."""

from __future__ import annotations

import argparse
import sys

from rollserve.api.server import launch_server
from rollserve.frontend.server_args import add_server_args, expand_config_argv, server_args_from_cli


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m rollserve.launch_server",
        description="Start the rollserve HTTP server (http://127.0.0.1:30000 by default); "
                    "flags follow SGLang's.")
    add_server_args(parser)
    namespace = parser.parse_args(expand_config_argv(sys.argv[1:]))
    sys.exit(launch_server(server_args_from_cli(namespace)))


if __name__ == "__main__":
    main()
