"""Walks SGLang's flag list (rollserve/frontend/sglang_flags.py): every flag is in exactly one
of the three groups of the flag table, and the parser does what its group says."""

import argparse
import dataclasses
import json

import pytest

from rollserve.frontend import flag_table
from rollserve.frontend.flag_table import FLAG_TABLE, IMPLEMENTED, NOOP, REFUSED
from rollserve.frontend.server_args import (ServerArgs, add_server_args, judge_sglang_values,
                                            server_args_from_cli)
from rollserve.frontend.sglang_flags import BY_DEST, SGLANG_FLAGS, SHORT_ALIASES

FIELDS = {f.name for f in dataclasses.fields(ServerArgs)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_server_args(p)
    return p


def sample(flag):
    """argv values for a value of `flag` other than the one(s) it accepts as rollserve's
    behaviour (None for a switch)."""
    if flag.type == "bool":
        return None
    if flag.choices:
        rule = FLAG_TABLE[flag.dest]
        if rule.kind == REFUSED:  # a value it refuses (for --sampling-defaults: the default)
            return [str(next(c for c in flag.choices if not rule.accepts(c, flag.default)))]
        return [str(next(c for c in flag.choices if c != flag.default))]
    base = flag.type.removeprefix("list[").rstrip("]")
    if base == "int":
        return [str(flag.default + 3 if isinstance(flag.default, int) else 7)]
    if base == "float":
        return [str(flag.default + 0.5 if isinstance(flag.default, float) else 0.25)]
    if base == "json":
        return [json.dumps({"not": "the default"})]
    return ["something-else"]


def argv_for(flag, name=None):
    values = sample(flag)
    return [name or flag.names[0]] + (values or [])


def test_the_list_is_sglangs_documented_serverargs():
    names = [n for f in SGLANG_FLAGS for n in f.names]
    assert len(SGLANG_FLAGS) >= 300 and len(names) == len(set(names))
    for name in ("--tp-size", "--tensor-parallel-size", "--dp-size", "--data-parallel-size",
                 "--mem-fraction-static", "--kv-cache-dtype", "--page-size", "--tokenizer-mode",
                 "--skip-tokenizer-init", "--trust-remote-code", "--speculative-algorithm",
                 "--speculative-num-steps", "--speculative-draft-model-path",
                 "--enable-dp-attention", "--ep-size", "--grammar-backend", "--tool-call-parser",
                 "--reasoning-parser", "--nnodes", "--node-rank", "--dist-init-addr",
                 "--enable-deterministic-inference", "--model", "--config", "--lora-paths",
                 "--quantization", "--enable-memory-saver", "--weight-version"):
        assert name in names, name
    assert SHORT_ALIASES == {"--tp": "tp_size", "--dp": "dp_size"}


def test_every_flag_is_in_exactly_one_group():
    assert set(FLAG_TABLE) == set(BY_DEST)  # no flag left out, none invented
    for flag in SGLANG_FLAGS:
        rule = FLAG_TABLE[flag.dest]
        assert rule.kind in (IMPLEMENTED, NOOP, REFUSED), flag.dest
        is_field = flag.dest in FIELDS
        # implemented <=> rollserve has the field (or the parser handles it: --config)
        assert (rule.kind == IMPLEMENTED) == (is_field or flag.dest in flag_table.CLI_ONLY), flag.dest
        if rule.kind == NOOP:
            assert rule.reason, flag.dest
        if rule.kind == REFUSED:
            assert rule.reason and rule.instead, flag.dest
    for dest in ("tp_size", "dp_size", "nnodes", "node_rank", "dist_init_addr", "dist_timeout"):
        assert FLAG_TABLE[dest].kind == IMPLEMENTED, dest  # issue #18
    assert FLAG_TABLE["enable_deterministic_inference"].kind == IMPLEMENTED  # issue #15


def implemented_argv(flag, name):
    from rollserve.frontend.server_args import CHOICES

    if flag.dest == "config":
        return [name, "x.yaml"]
    if flag.type == "bool":
        return [name]
    if flag.dest in CHOICES:
        return [name, CHOICES[flag.dest][-1]]
    if flag.type.startswith("list["):
        return [name, "1", "2"]
    return [name, "3" if flag.type in ("int", "float") else "value"]


@pytest.mark.parametrize("flag", [f for f in SGLANG_FLAGS if FLAG_TABLE[f.dest].kind == IMPLEMENTED],
                         ids=lambda f: f.dest)
def test_implemented_flags_set_their_field(flag):
    for name in flag.names:
        argv = implemented_argv(flag, name)
        namespace = parser().parse_args(argv)
        default = None if flag.dest == "config" else ServerArgs.__dataclass_fields__[flag.dest].default
        assert getattr(namespace, flag.dest) != default, argv
        assert not any(k.startswith("sglang__") for k in vars(namespace))


@pytest.mark.parametrize("flag", [f for f in SGLANG_FLAGS if FLAG_TABLE[f.dest].kind == NOOP],
                         ids=lambda f: f.dest)
def test_noop_flags_are_accepted_and_noted(flag):
    for name in flag.names:
        namespace = parser().parse_args(argv_for(flag, name))
        assert server_args_from_cli(namespace) == ServerArgs()  # nothing changes
    value = getattr(parser().parse_args(argv_for(flag)), "sglang__" + flag.dest)
    notes, refusals = judge_sglang_values({flag.dest: value})
    assert not refusals and len(notes) == 1
    assert notes[0].startswith(flag.name) and "no effect" in notes[0]


@pytest.mark.parametrize("flag", [f for f in SGLANG_FLAGS if FLAG_TABLE[f.dest].kind == REFUSED],
                         ids=lambda f: f.dest)
def test_refused_flags_name_the_flag_the_reason_and_what_instead(flag):
    rule = FLAG_TABLE[flag.dest]
    for name in flag.names + tuple(a for a, d in SHORT_ALIASES.items() if d == flag.dest):
        with pytest.raises(SystemExit) as stop:
            server_args_from_cli(parser().parse_args(argv_for(flag, name)))
        message = str(stop.value)
        assert message.startswith(f"error: {flag.name}") and "\n" not in message
        assert rule.reason in message and f"instead: {rule.instead}" in message
    # the value that asks for what rollserve does is accepted
    for ok in (rule.accept if rule.accept is not None else (flag.default,)):
        if ok is None or isinstance(ok, bool):
            continue  # leaving the flag out is the way to ask for these
        if flag.type.startswith("list["):
            argv = [flag.names[0], *map(str, ok)]
        else:
            argv = [flag.names[0], json.dumps(ok) if isinstance(ok, (list, dict)) else str(ok)]
        assert server_args_from_cli(parser().parse_args(argv)) == ServerArgs()


def test_sglang_launch_lines_that_ask_for_the_defaults_start():
    argv = ["--tp", "1", "--dp", "1", "--kv-cache-dtype", "auto", "--page-size", "1",
            "--tokenizer-mode", "auto", "--trust-remote-code", "--mem-fraction-static", "0.7",
            "--enable-p2p-check", "--skip-tokenizer-init", "--grammar-backend", "none",
            "--sampling-backend", "pytorch", "--nnodes", "1", "--node-rank", "0",
            "--ep-size", "1", "--speculative-num-steps", "3", "--log-level", "WARNING"]
    args = server_args_from_cli(parser().parse_args(argv))
    assert args.trust_remote_code and args.mem_fraction_static == 0.7 and args.log_level == "warning"


def test_several_refusals_are_reported_together():
    argv = ["--pp-size", "8", "--speculative-accept-threshold-acc", "0.5", "--quantization", "fp8"]
    with pytest.raises(SystemExit) as stop:
        server_args_from_cli(parser().parse_args(argv))
    lines = str(stop.value).splitlines()
    assert [line.split(":")[1].strip() for line in lines] == \
        ["--pp-size 8", "--speculative-accept-threshold-acc 0.5", "--quantization fp8"]


def test_engine_kwargs_follow_the_same_table():
    assert ServerArgs.from_kwargs(tp_size=1, skip_tokenizer_init=True, enable_p2p_check=True,
                                  max_total_tokens=512).max_total_tokens == 512
    with pytest.raises(ValueError, match=r"--pp-size 2: this kind of parallelism .*; instead: "):
        ServerArgs.from_kwargs(pp_size=2)
    assert ServerArgs.from_kwargs(tp_size=2).tp_size == 2
    with pytest.raises(TypeError, match="no_such_flag"):
        ServerArgs.from_kwargs(no_such_flag=1)
