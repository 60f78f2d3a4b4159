"""The flags of the eval CLI added for benchmarks and scale: repeated --server, shares of
servers for concurrent checkpoints, --data-dir, --lm-eval-tasks; bad values exit with
code 2 naming the flag before any server is contacted."""

from __future__ import annotations

import logging

import pytest

from rollserve.cli import build_parser
from rollserve.core.sampling_params import InvalidRequest
from rollserve.eval.cli import run_eval, server_urls, url_groups
from tests.eval.bench_data import write_bench_data


def parse(*argv):
    return build_parser().parse_args(["eval", *argv])


def test_server_given_more_than_once_or_comma_separated():
    ns = parse("watch", "run", "--server", "http://a:1", "--server", "http://b:2,http://c:3")
    assert server_urls(ns) == ["http://a:1", "http://b:2", "http://c:3"]
    assert url_groups(server_urls(ns), 1) == [["http://a:1", "http://b:2", "http://c:3"]]
    assert url_groups(["u0", "u1", "u2", "u3"], 2) == [["u0", "u2"], ["u1", "u3"]]
    with pytest.raises(InvalidRequest, match="at least 3 --server URLs"):
        url_groups(["u0", "u1"], 3)


def _exit_code(caplog, *argv) -> int:
    with caplog.at_level(logging.ERROR, logger="rollserve.eval"):
        return run_eval(parse(*argv))


def test_bad_flags_exit_2_before_any_server(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    unreachable = "http://127.0.0.1:9"  # nothing is contacted: every case fails first
    assert _exit_code(caplog, "watch", str(run_dir), "--server", unreachable,
                      "--concurrent-checkpoints", "2") == 2
    assert "concurrent_checkpoints" in caplog.text
    data = write_bench_data(tmp_path / "data")
    caplog.clear()
    assert _exit_code(caplog, "watch", str(run_dir), "--launch", "--concurrent-checkpoints", "2",
                      "--tasks", "gsm8k", "--data-dir", data) == 2
    assert "concurrent_checkpoints" in caplog.text
    caplog.clear()
    assert _exit_code(caplog, "run", "--server", unreachable, "--tasks", "math500",
                      "--data-dir", str(tmp_path / "none")) == 2
    assert "math500: no data found" in caplog.text
    caplog.clear()
    assert _exit_code(caplog, "run", "--server", unreachable, "--tasks", "gsm8k",
                      "--include-path", str(tmp_path)) == 2
    assert "include_path" in caplog.text
    caplog.clear()
    assert _exit_code(caplog, "run", "--server", unreachable, "--tasks", "") == 2
    assert "name at least one task" in caplog.text
