"""exit_with_parent: a child whose parent was killed (SIGKILL, no clean-up ran) removes the
IPC folder and exits (issue #14)."""

import os
import signal
import subprocess
import sys
import time

import psutil

import rollserve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(rollserve.__file__)))
PARENT = r"""
import multiprocessing as mp, sys, time

def child(ipc_dir):
    from rollserve.core.logging_setup import exit_with_parent
    exit_with_parent(ipc_dir)
    time.sleep(60)

if __name__ == "__main__":
    proc = mp.get_context("spawn").Process(target=child, args=(sys.argv[1],))
    proc.start()
    print(proc.pid, flush=True)
    time.sleep(60)
"""


def test_children_remove_the_ipc_dir_when_the_parent_is_killed(tmp_path):
    ipc_dir = tmp_path / "rollserve-ipc"
    ipc_dir.mkdir()
    (ipc_dir / "scheduler").write_text("")
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(ipc_dir)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": ROOT})
    child = psutil.Process(int(parent.stdout.readline()))
    time.sleep(1.5)  # the child's watcher is running
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while ipc_dir.exists() or child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the orphaned child kept the IPC dir or kept running"
        time.sleep(0.2)
