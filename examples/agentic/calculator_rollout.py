"""A multi-turn tool-use rollout: arithmetic questions, a calculator tool, token-exact turns.

    python examples/agentic/calculator_rollout.py                 # launches the default model
    python examples/agentic/calculator_rollout.py --url http://127.0.0.1:30000 --problems 8

Each problem is a conversation the policy drives through RolloutClient.generate on token
ids (docs/multiturn.md): the model answers, rollserve's tool-call parser (qwen25, the
<tool_call> format) reads the calls out of its text, the calculator runs them, and the
tool's answer is appended as the token ids of just that turn; the loop ends when the
model answers without a call. Printed per problem: each turn's text, calls, tool output,
weight_version and cached tokens, then what a trainer trains on: the completion's token
ids, the loss mask (0 on the tool's tokens) and the sampling logprobs.

The default model is small (SmolLM2-135M-Instruct), so the prompt shows it two worked
conversations in the tool format; a real tool-using model (Qwen2.5 with
--chat-template left to its own) needs none of that.
"""

from __future__ import annotations

import argparse
import ast
import json
import operator
import os
import random
import re
import sys
from dataclasses import dataclass
from typing import List, Optional

from rollserve.frontend.tool_parsers import make_tool_parser
from rollserve.rollout import RolloutClient
from rollserve.rollout.trajectory import Trajectory, next_turn_text

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tool_chat_template.jinja")
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression (+, -, *, /, parentheses)",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
SYSTEM = "Use the calculator tool for arithmetic, then give the answer."
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}
INTEGER = re.compile(r"-?\d+")


# ---- the environment ------------------------------------------------------------------------
def calculate(expression: str) -> str:
    """The tool: arithmetic only (an AST walk, no eval); errors come back as text."""
    def value(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError("only numbers and + - * / ( )")

    try:
        result = value(ast.parse(str(expression), mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError) as e:
        return f"error: {e}"
    return str(int(result)) if float(result).is_integer() else f"{result:.6g}"


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    c: int

    @property
    def expression(self) -> str:
        return f"{self.a}*{self.b}+{self.c}"

    @property
    def question(self) -> str:
        return f"What is {self.expression}?"

    @property
    def answer(self) -> int:
        return self.a * self.b + self.c


def reward(problem: Problem, final_text: str) -> float:
    numbers = INTEGER.findall(final_text.replace(",", ""))
    return 1.0 if numbers and int(numbers[-1]) == problem.answer else 0.0


def worked_examples() -> List[dict]:
    """Two conversations in the tool format, for a model too small to know it."""
    messages = [{"role": "system", "content": SYSTEM}]
    for i, p in enumerate([Problem(12, 3, 5), Problem(7, 8, 9)]):
        # arguments as an object, as transformers' templates take them (the API converts
        # the OpenAI JSON string the same way before rendering)
        call = {"id": f"call_{i}", "type": "function", "function": {
            "name": "calculator", "arguments": {"expression": p.expression}}}
        messages += [{"role": "user", "content": p.question},
                     {"role": "assistant", "content": "", "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{i}", "content": str(p.answer)},
                     {"role": "assistant", "content": f"The answer is {p.answer}."}]
    return messages


# ---- the rollout ---------------------------------------------------------------------------------
@dataclass
class Rollout:
    problem: Problem
    trajectory: Trajectory
    texts: List[str]  # each model turn's text
    tool_outputs: List[List[str]]  # per model turn: what its calls returned
    reward: float


def rollout(client: RolloutClient, tokenizer, problem: Problem, sampling_params: dict,
            max_turns: int = 3) -> Rollout:
    tools = [CALCULATOR]
    messages = worked_examples() + [{"role": "user", "content": problem.question}]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=True)
    traj = Trajectory(tokenizer.encode(prompt, add_special_tokens=False))
    texts, outputs = [], []
    for _ in range(max_turns):
        sample = client.generate(input_ids=[traj.ids], sampling_params=sampling_params)[0][0]
        traj.add_model_turn(sample)
        texts.append(sample.text)
        parsed = make_tool_parser("qwen25", ["calculator"]).parse(sample.text)
        calls = _calls(parsed.calls)
        outputs.append([])
        if not calls:
            break
        replies = []
        for call_id, arguments in calls:
            try:
                expression = json.loads(arguments).get("expression", "")
            except (ValueError, AttributeError):
                expression = arguments
            outputs[-1].append(calculate(expression))
            replies.append({"role": "tool", "tool_call_id": call_id, "content": outputs[-1][-1]})
        ended = sample.finish_reason.get("type") == "stop"
        text = next_turn_text(tokenizer, replies, eos_sampled=ended, tools=tools)
        traj.add_context(tokenizer.encode(text, add_special_tokens=False))
    return Rollout(problem, traj, texts, outputs, reward(problem, texts[-1]))


def _calls(deltas) -> List[tuple]:
    """(id, arguments JSON) per parsed call."""
    calls = {}
    for d in deltas:
        if d.name is not None:
            calls[d.index] = [d.id, ""]
        calls[d.index][1] += d.arguments
    return [tuple(calls[i]) for i in sorted(calls)]


def show(r: Rollout) -> None:
    t = r.trajectory
    print(f"\n=== {r.problem.question}  (answer {r.problem.answer}, reward {r.reward})")
    model_turns = [turn for turn in t.turns if turn.by_model]
    for k, (turn, text, outputs) in enumerate(zip(model_turns, r.texts, r.tool_outputs)):
        print(f"turn {k}: weight_version={turn.weight_version} cached_tokens={turn.cached_tokens} "
              f"tokens={turn.end - turn.start}: {text!r}")
        for output in outputs:
            print(f"  calculator -> {output}")
    ids, mask = t.completion_ids, t.completion_mask
    logprobs = t.logprobs[len(t.prompt_ids):]
    print(f"trainer: {len(t.prompt_ids)} prompt tokens + {len(ids)} completion tokens, "
          f"{sum(mask)} in the loss")
    print("  input_ids[prompt:] ", ids)
    print("  loss_mask          ", mask)
    print("  logprobs           ", [None if lp is None else round(lp, 3) for lp in logprobs])


def main(argv: Optional[List[str]] = None) -> List[Rollout]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running rollserve server (default: launch one)")
    parser.add_argument("--model-path", help="model to launch (default: the embedded SmolLM2)")
    parser.add_argument("--problems", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-turns", type=int, default=3)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    problems = [Problem(rng.randint(2, 19), rng.randint(2, 9), rng.randint(1, 30))
                for _ in range(args.problems)]
    params = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    if args.url:
        client = RolloutClient(args.url, progress=False)
        return _run(client, problems, params, args.max_turns)
    with RolloutClient.launch(args.model_path, progress=False) as client:
        return _run(client, problems, params, args.max_turns)


def _run(client: RolloutClient, problems: List[Problem], params: dict, max_turns: int) -> List[Rollout]:
    from transformers import AutoTokenizer

    info = client.get_model_info()
    tokenizer = AutoTokenizer.from_pretrained(info["tokenizer_path"] or info["model_path"])
    with open(TEMPLATE) as f:
        tokenizer.chat_template = f.read()  # the tool format the worked examples use
    results = [rollout(client, tokenizer, p, params, max_turns) for p in problems]
    for r in results:
        show(r)
    print(f"\nmean reward {sum(r.reward for r in results) / len(results):.2f} over "
          f"{len(results)} problems")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
