"""The command line: --help, enforced choices, errors before start, --config, and SGLang's
environment switches."""

import argparse
import dataclasses
import subprocess
import sys

import pytest
import torch

from rollserve.frontend.server_args import (CHOICES, HELP, ServerArgs, add_server_args,
                                            expand_config_argv, server_args_from_cli)
from rollserve.frontend.sglang_env import SGLANG_ENV, check_sglang_environment


def parse(argv):
    p = argparse.ArgumentParser(exit_on_error=False)
    add_server_args(p)
    return p.parse_args(argv)


def from_cli(argv):
    return server_args_from_cli(parse(argv))


def test_where_it_listens_by_default():  # the README's promise
    args = ServerArgs()
    assert (args.host, args.port) == ("127.0.0.1", 30000)


def test_help_has_a_line_and_a_default_for_every_flag():
    p = argparse.ArgumentParser()
    add_server_args(p)
    actions = [a for a in p._actions if a.option_strings and a.dest != "help"]
    assert len(actions) > 350
    for action in actions:
        assert action.help and "%" not in action.help, action.option_strings
        assert "_UNSUPPORTED" not in str(action.metavar)  # no placeholder metavars
    fields = {f.name: f for f in dataclasses.fields(ServerArgs)}
    assert set(HELP) == set(fields)
    for action in actions:
        if action.dest in fields:
            assert "default" in action.help, action.option_strings
    text = " ".join(p.format_help().split())  # unwrapped
    assert "(default: 30000)" in text and "(default: 127.0.0.1)" in text
    assert "{debug,info,warning,error,critical}" in text  # choices are shown


@pytest.mark.parametrize("argv", [["--log-level", "LOUD"], ["--dtype", "int3"],
                                  ["--attention-backend", "fa3"], ["--schedule-policy", "lof"],
                                  ["--load-format", "gguf"], ["--log-level-http", "chatty"],
                                  ["--log-requests-format", "yaml"]])
def test_choices_are_enforced(argv):
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        parse(argv)


def test_log_level_takes_either_case():
    assert from_cli(["--log-level", "WARNING"]).log_level == "warning"
    assert set(CHOICES["log_level"]) == {"debug", "info", "warning", "error", "critical"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_one_line_at_parse_time():
    with pytest.raises(SystemExit) as stop:
        from_cli(["--device", "cuda"])
    assert str(stop.value).startswith("error: --device: cuda is not available here")
    assert "\n" not in str(stop.value)
    with pytest.raises(SystemExit, match="--device: must be cuda, cuda:N or cpu"):
        from_cli(["--device", "tpu"])


def test_errors_before_start(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --model-path: .* is not a folder"):
        from_cli(["--model-path", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match=r"^error: --chat-template: 'nope' is neither a built-in"):
        from_cli(["--chat-template", "nope"])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="^error: --attention-backend: triton needs a CUDA"):
            from_cli(["--attention-backend", "triton"])
    with pytest.raises(SystemExit, match="^error: --mem-fraction-static: must be in"):
        from_cli(["--mem-fraction-static", "1.5"])


def test_the_command_line_refuses_in_one_line_per_flag():
    done = subprocess.run([sys.executable, "-m", "rollserve.cli", "serve", "--pp-size", "2",
                           "--kv-cache-dtype", "fp8_e5m2"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: --pp-size 2: this kind of parallelism is not implemented (tensor and data "
        "parallelism are); instead: --tp-size N to split a model over N GPUs, --dp-size N (or one "
        "server per replica behind `rollserve router`) for replicas",
        "error: --kv-cache-dtype fp8_e5m2: the KV cache is kept in the model's dtype (FP8/FP4 KV "
        "caches are not implemented); instead: --kv-cache-dtype auto (--dtype sets both)"]


# ---- --config -----------------------------------------------------------------------------------
def test_config_file_flags_and_command_line_wins(tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("port: 31000\nmax-total-tokens: 4096\nenable_metrics: true\n"
                      "disable-radix-cache: false\ncuda-graph-bs: [1, 2, 4]\ntp-size: 1\n")
    argv = expand_config_argv(["--port", "32000", "--config", str(config)])
    args = from_cli(argv)
    assert args.port == 32000  # the command line wins
    assert args.max_total_tokens == 4096 and args.enable_metrics and not args.disable_radix_cache
    assert args.cuda_graph_bs == [1, 2, 4]
    # the subcommand's position is kept
    assert expand_config_argv(["serve", f"--config={config}", "--port", "1"], insert_at=1)[:3] == \
        ["serve", "--port", "31000"]


def test_config_file_goes_through_the_same_table(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("pp-size: 4\n")
    with pytest.raises(SystemExit, match="^error: --pp-size 4: this kind of parallelism"):
        from_cli(expand_config_argv(["--config", str(config)]))
    with pytest.raises(SystemExit, match="--config .*missing.yaml"):
        expand_config_argv(["--config", str(tmp_path / "missing.yaml")])
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(SystemExit, match="expected a mapping"):
        expand_config_argv(["--config", str(tmp_path / "list.yaml")])


# ---- SGLang's environment switches ------------------------------------------------------------
def test_environment_switches_are_never_silently_ignored():
    notes, refusals = check_sglang_environment({
        "SGL_ENABLE_JIT_DEEPGEMM": "1", "SGLANG_USE_MODELSCOPE": "false",
        "SGLANG_TORCH_PROFILER_DIR": "/tmp/p", "SGLANG_SOMETHING_NEW": "7", "PATH": "/bin"})
    assert notes == [
        "SGLANG_SOMETHING_NEW=7: not an environment switch rollserve knows; ignored",
        "SGL_ENABLE_JIT_DEEPGEMM=1: no effect in rollserve: no DeepGEMM kernels run here "
        "(bf16/fp16/fp32 GEMMs go through torch)"]
    assert refusals == []
    notes, refusals = check_sglang_environment({"SGLANG_USE_MODELSCOPE": "1",
                                                "SGLANG_REQ_WAITING_TIMEOUT": "30",
                                                "SGLANG_REQ_RUNNING_TIMEOUT": "-1"})
    assert notes == [] and len(refusals) == 2
    assert refusals[0].startswith("SGLANG_REQ_WAITING_TIMEOUT=30: request queue/run timeouts")
    assert "instead: download the model" in refusals[1]
    assert all(s.reason for s in SGLANG_ENV.values())


def test_a_refused_switch_stops_the_start(monkeypatch):
    monkeypatch.setenv("SGLANG_USE_MODELSCOPE", "true")
    with pytest.raises(SystemExit, match="^error: SGLANG_USE_MODELSCOPE=true: models are not"):
        from_cli([])
    with pytest.raises(ValueError, match="SGLANG_USE_MODELSCOPE"):
        ServerArgs.from_kwargs()


def test_dp_attention_and_expert_parallel_settings():
    """docs/parallel.md's promises: DP attention needs dp_size == tp_size > 1 and runs eager
    under the overlap scheduler (as SGLang; --disable-overlap-schedule still turns it off);
    --enable-ep-moe means ep_size = tp_size; ep_size is 1 or
    tp_size."""
    args = ServerArgs(model_path="m", tp_size=2, dp_size=2, enable_dp_attention=True)
    config = args.scheduler_config()
    assert config.executor.dp_attention and config.executor.disable_cuda_graph
    assert not config.disable_overlap_schedule
    assert ServerArgs(model_path="m", tp_size=2, dp_size=2, enable_dp_attention=True,
                      disable_overlap_schedule=True).scheduler_config().disable_overlap_schedule
    for bad in (dict(tp_size=2, dp_size=1), dict(tp_size=1, dp_size=1)):
        with pytest.raises(ValueError, match="enable_dp_attention"):
            ServerArgs(model_path="m", enable_dp_attention=True, **bad)
    assert ServerArgs(model_path="m", tp_size=4, enable_ep_moe=True).ep_size == 4
    with pytest.raises(ValueError, match="ep_size"):
        ServerArgs(model_path="m", tp_size=4, ep_size=2)


def test_moe_a2a_backend_deepep_selects_the_all_to_all_dispatch():
    """--moe-a2a-backend deepep (or SGLang's older --enable-deepep-moe) sets ep_size to tp_size
    as SGLang does and turns on the torch.distributed all-to-all under DP attention; without
    DP attention, or with another transfer library, the start stops naming the flag."""
    dp = ["--tp-size", "2", "--dp-size", "2", "--enable-dp-attention"]
    for flags in (["--moe-a2a-backend", "deepep"], ["--enable-deepep-moe"]):
        args = from_cli(dp + flags)
        assert (args.moe_a2a_backend, args.ep_size) == ("deepep", 2)
        executor = dataclasses.replace(args, model_path="m").scheduler_config().executor
        assert executor.moe_a2a and executor.ep_size == 2
    plain = ServerArgs(model_path="m", tp_size=2, dp_size=2, enable_dp_attention=True, ep_size=2)
    assert not plain.scheduler_config().executor.moe_a2a  # none: the all-gather + all-reduce
    with pytest.raises(ValueError, match="moe_a2a_backend: .*--enable-dp-attention"):
        ServerArgs(model_path="m", tp_size=2, moe_a2a_backend="deepep")
    with pytest.raises(argparse.ArgumentError, match="invalid choice: 'mooncake'"):
        parse(dp + ["--moe-a2a-backend", "mooncake"])


def test_mm_enable_dp_encoder_reaches_the_executor(tmp_path):
    model = str(tmp_path)
    args = from_cli(["--model-path", model, "--tp-size", "2", "--mm-enable-dp-encoder"])
    assert args.executor_config().mm_enable_dp_encoder is True
    assert from_cli(["--model-path", model]).executor_config().mm_enable_dp_encoder is False
