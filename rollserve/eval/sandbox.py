"""Runs generated code (HumanEval / MBPP tests) in a child process that cannot hurt the
machine: a wall-clock limit (the whole process group is killed), CPU seconds, address
space, file size and process count limits (a fork bomb hits the process limit), no
network (a fresh network namespace with no interfaces up), and a temporary folder as its
working directory, removed afterwards. Run as root, the child drops to the `nobody` user
first: root ignores the process limit, and nobody cannot write outside its folder.

Where no network namespace can be made (no privilege, user namespaces off), the program
runs with Python's socket module disabled instead; Outcome.network says which.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

PASSED, FAILED, TIMEOUT = "passed", "failed", "timeout"

# Runs inside the child, before the program: limits, namespace, user, then exec.
_LAUNCHER = r"""
import ctypes, os, resource, sys
memory, cpu, nprocs, fsize, uid = (int(v) for v in sys.argv[1:6])
program, python = sys.argv[6], sys.argv[7]
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
network = "namespace"
if libc.unshare(CLONE_NEWNET) != 0 and libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
    network = "socket-disabled"
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if os.getuid() == 0 and uid >= 0:
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
# the process limit counts every process of the user: allow what it already runs, plus nprocs
me = os.getuid()
running = 0
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            running += os.stat("/proc/" + pid).st_uid == me
        except OSError:
            pass
resource.setrlimit(resource.RLIMIT_NPROC, (running + nprocs, running + nprocs))
sys.stderr.write("sandbox-network: " + network + "\n")
sys.stderr.flush()
if network == "namespace":
    os.execv(python, [python, "-I", program])
guard = ("import socket\n"
         "def _refused(*a, **k):\n    raise OSError('network access is disabled in the sandbox')\n"
         "socket.socket = socket.create_connection = socket.getaddrinfo = _refused\n"
         "import runpy; runpy.run_path(%r, run_name='__main__')\n" % program)
os.execv(python, [python, "-I", "-c", guard])
"""


@dataclass
class Limits:
    timeout_s: float = 10.0       # wall clock
    memory_mb: int = 1024         # address space
    max_processes: int = 16       # processes the program may add
    max_file_mb: int = 16
    max_output_chars: int = 2000  # of stdout/stderr kept in the outcome


@dataclass
class Outcome:
    status: str        # passed | failed | timeout
    returncode: int
    seconds: float
    output: str        # the tail of stdout + stderr
    network: str = ""  # "namespace" or "socket-disabled"

    @property
    def passed(self) -> bool:
        return self.status == PASSED


def _nobody() -> int:
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return 65534


def world_runnable(path: str) -> bool:
    """Whether any user may run `path`: every folder above it searchable by others, the
    file readable and executable by others."""
    path = os.path.realpath(path)
    try:
        if os.stat(path).st_mode & 0o005 != 0o005:
            return False
        folder = os.path.dirname(path)
        while folder != os.path.dirname(folder):
            if not os.stat(folder).st_mode & 0o001:
                return False
            folder = os.path.dirname(folder)
    except OSError:
        return False
    return True


def interpreter(drop_to_nobody: bool) -> Optional[str]:
    """The Python that runs the program: this one, or, when the program runs as nobody and
    this one lives where nobody cannot reach it (a venv or pyenv under /root), the system's
    python3 (generated code needs only the standard library); None when nobody can run
    none of them."""
    own = os.path.realpath(sys.executable)
    if not drop_to_nobody or world_runnable(own):
        return own
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if world_runnable(candidate):
            return os.path.realpath(candidate)
    return None


def run_program(source: str, limits: Limits = Limits()) -> Outcome:
    """Runs `source` as a Python program; passed when it exits 0 within the limits."""
    folder = tempfile.mkdtemp(prefix="rollserve-sandbox-")
    uid = _nobody() if os.getuid() == 0 else -1
    python = interpreter(uid >= 0)
    if python is None:  # stays root: every limit but the process count still holds
        _warn_once(f"no Python the nobody user may run ({sys.executable} is not reachable by "
                   "other users, no system python3): generated code runs as root, without a "
                   "process limit")
        uid, python = -1, os.path.realpath(sys.executable)
    try:
        program = os.path.join(folder, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(source)
        if uid >= 0:
            os.chown(folder, uid, uid)
            os.chown(program, uid, uid)
        args = [sys.executable, "-I", "-c", _LAUNCHER, str(limits.memory_mb << 20),
                str(max(1, int(limits.timeout_s + 1))), str(limits.max_processes),
                str(limits.max_file_mb << 20), str(uid), program,
                python]
        start = time.monotonic()
        proc = subprocess.Popen(args, cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                env={"PATH": "/usr/bin:/bin", "HOME": folder, "LANG": "C.UTF-8"})
        try:
            out, _ = proc.communicate(timeout=limits.timeout_s)
            status = PASSED if proc.returncode == 0 else FAILED
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, _ = proc.communicate()
            status = TIMEOUT
        finally:
            _kill_group(proc.pid)  # children left behind (a fork bomb's, a daemon thread's)
        seconds = time.monotonic() - start
        text = out.decode("utf-8", "replace")
        network = ""
        first, _, rest = text.partition("\n")
        if first.startswith("sandbox-network: "):
            network, text = first.split(": ", 1)[1], rest
        return Outcome(status, proc.returncode, seconds, text[-limits.max_output_chars:], network)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_warned = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("rollserve.eval").warning("sandbox: %s", message)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
