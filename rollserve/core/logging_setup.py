"""One logging format for every process."""

import logging
import os
from typing import Optional


def configure_logging(level: str = "info", prefix: str = "rollserve") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"[%(asctime)s {prefix}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def exit_with_parent(ipc_dir: Optional[str] = None) -> None:
    """In a child process: exit as soon as the parent is gone, so no orphan survives
    a parent killed with SIGKILL; first remove `ipc_dir` (the sockets' folder), which the
    parent can no longer do."""
    import os
    import threading
    import time

    parent = os.getppid()

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                if ipc_dir:
                    remove_dir(ipc_dir)
                os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def remove_dir(path: str) -> None:
    """Remove a flat folder and the files in it; whatever is already gone is fine."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        try:
            os.unlink(os.path.join(path, name))
        except OSError:
            pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def ipc_dir_of(ports: dict) -> Optional[str]:
    """The folder of the ipc:// endpoints in `ports` (frontend/processes.py makes them)."""
    address = next(iter(ports.values()), "")
    return os.path.dirname(address[len("ipc://"):]) if address.startswith("ipc://") else None
