"""One logging format for every process."""

import logging


def configure_logging(level: str = "info", prefix: str = "rollserve") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"[%(asctime)s {prefix}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def exit_with_parent() -> None:
    """In a child process: exit as soon as the parent is gone, so no orphan survives
    a parent killed with SIGKILL."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
