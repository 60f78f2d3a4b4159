"""The flags of the eval CLI added for benchmarks and scale: repeated --server, shares of
servers for concurrent checkpoints, --data-dir, --lm-eval-tasks; bad values exit with
code 2 naming the flag before any server is contacted."""

from __future__ import annotations

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


def _exit_code(capsys, *argv) -> tuple:
    """(exit code, what was written to stderr)."""
    code = run_eval(parse(*argv))
    return code, capsys.readouterr().err


def test_bad_flags_exit_2_before_any_server(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    data = write_bench_data(tmp_path / "data")
    unreachable = "http://127.0.0.1:9"  # nothing is contacted: every case fails first
    cases = [
        (["watch", str(run_dir), "--server", unreachable, "--concurrent-checkpoints", "2"],
         "concurrent_checkpoints: 2 checkpoints at once need at least 2 --server URLs"),
        # one server named twice would be two shares swapping each other's weights
        (["watch", str(run_dir), "--server", "http://localhost:9/,http://127.0.0.1:9",
          "--concurrent-checkpoints", "2"], "server: http://127.0.0.1:9 and http://localhost:9/ "
                                            "name the same server"),
        (["watch", str(run_dir), "--launch", "--concurrent-checkpoints", "2", "--tasks", "gsm8k",
          "--data-dir", data], "concurrent_checkpoints"),
        (["run", "--server", unreachable, "--tasks", "math500", "--data-dir", str(tmp_path / "none")],
         "math500: no data found"),
        (["run", "--server", unreachable, "--tasks", "gsm8k", "--data-dir", data,
          "--include-path", str(tmp_path)], "include_path: only applies with --lm-eval-tasks"),
        (["run", "--server", unreachable, "--tasks", ""], "name at least one task"),
    ]
    for argv, message in cases:
        code, err = _exit_code(capsys, *argv)
        assert code == 2 and message in err, (argv, err)
