"""The code sandbox: a passing and a failing program, and limits that hold: an infinite
loop and a fork bomb are stopped within their limits, memory is capped, and there is
no network."""

from __future__ import annotations

import os
import time

from rollserve.eval.sandbox import FAILED, PASSED, TIMEOUT, Limits, run_program


def _processes_of(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                count += os.stat(f"/proc/{pid}").st_uid == uid
            except OSError:
                pass
    return count


def test_passing_and_failing_programs():
    ok = run_program("def f(x):\n    return x + 1\nassert f(1) == 2\nprint('fine')\n")
    assert ok.status == PASSED and ok.passed and "fine" in ok.output
    bad = run_program("assert 1 + 1 == 3, 'arithmetic'\n")
    assert bad.status == FAILED and not bad.passed and "AssertionError" in bad.output
    broken = run_program("def f(:\n")
    assert broken.status == FAILED and "SyntaxError" in broken.output


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    outcome = run_program("while True:\n    pass\n", Limits(timeout_s=1.5))
    assert outcome.status == TIMEOUT and not outcome.passed
    assert time.monotonic() - start < 6


def test_fork_bomb_is_contained():
    before = time.monotonic()
    outcome = run_program("import os\nwhile True:\n    os.fork()\n",
                          Limits(timeout_s=3, max_processes=8))
    assert not outcome.passed
    assert time.monotonic() - before < 10
    if os.getuid() == 0:  # it ran as nobody: nothing of it may be left running
        deadline = time.monotonic() + 5
        while _processes_of(65534) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_of(65534) == 0


def test_memory_limit_and_no_network():
    hog = run_program("block = bytearray(3 << 30)\n", Limits(memory_mb=256))
    assert hog.status == FAILED and "MemoryError" in hog.output
    net = run_program("import socket\nsocket.create_connection(('127.0.0.1', 22), timeout=2)\n")
    assert net.status == FAILED and net.network in ("namespace", "socket-disabled")
    assert "Error" in net.output
