"""examples/agentic/calculator_rollout.py against a server on the default model: one
problem, the model calls the calculator, the tool's answer goes back as token ids, and
the trajectory a trainer gets is token-exact (loss mask 0 on the tool's tokens, a
logprob on every model token, a weight_version per turn, earlier turns cached)."""

import importlib.util
import os
import sys

import pytest

from tests.api.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "agentic",
                       "calculator_rollout.py")


def load_example():
    spec = importlib.util.spec_from_file_location("calculator_rollout", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_calculator_tool(tmp_path):
    example = load_example()
    assert example.calculate("12*3+5") == "41" and example.calculate("7/2") == "3.5"
    assert example.calculate("__import__('os')").startswith("error")
    assert example.calculate("1/0").startswith("error")


def test_calculator_rollout(tmp_path, capsys):
    example = load_example()
    server = start_server(tmp_path, "agentic")
    try:
        [r] = example.main(["--url", server.url, "--problems", "1", "--max-turns", "2"])
    finally:
        stop_server(server)
    t = r.trajectory
    assert len(t.ids) == len(t.loss_mask) == len(t.logprobs)
    model_turns = [turn for turn in t.turns if turn.by_model]
    tool_turns = [turn for turn in t.turns if not turn.by_model]
    # the model called the calculator in its first turn; the answer went back as context
    assert r.tool_outputs[0] and len(model_turns) == 2 and len(tool_turns) == 1
    assert not r.tool_outputs[0][0].startswith("error"), r.texts[0]  # it parsed as arithmetic
    tool = tool_turns[0]
    assert t.loss_mask[tool.start:tool.end] == [0] * (tool.end - tool.start)
    for turn in model_turns:
        assert t.loss_mask[turn.start:turn.end] == [1] * (turn.end - turn.start)
        assert all(lp is not None and lp <= 0 for lp in t.logprobs[turn.start:turn.end])
        assert turn.weight_version == "default"
    # the second turn reused the first turn's KV (all but its last sampled token)
    assert model_turns[1].cached_tokens >= model_turns[0].end - 1
    printed = capsys.readouterr().out
    assert "loss_mask" in printed and "calculator ->" in printed and "weight_version=default" in printed
