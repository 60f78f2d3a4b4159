"""Function calling and reasoning on /v1/chat/completions: the request's `tools`,
`tool_choice`, `separate_reasoning` and `chat_template_kwargs` checked (a 400 names the
field), turned into the chat template's inputs and the engine's constraint, and the
answers turned back into messages and stream deltas (`reasoning_content`, `tool_calls`,
finish_reason "tool_calls").

tool_choice: "none" (the template gets no tools, nothing is parsed), "auto" (the default
with tools: the --tool-call-parser format is parsed out of the answer), "required" or
{"type": "function", "function": {"name": ...}}: the answer is constrained by a JSON
schema (frontend/tool_schema.py) to a JSON array of calls, which needs the grammar
backend; without it such a request is refused rather than silently unenforced.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from rollserve.api.protocol import (ApiError, AssistantMessage, ChatCompletionRequest,
                                    ChatMessage, DeltaMessage, FunctionCall, FunctionCallDelta,
                                    ToolCall, ToolCallDelta)
from rollserve.core.sampling_params import SamplingParams
from rollserve.frontend.chat_output import AnswerSplitter, OutputFormat, Piece
from rollserve.frontend.tool_parsers import JsonArrayParser
from rollserve.frontend.tool_schema import tool_call_schema_json

FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's rule (dots as SGLang allows)
TOOL_CHOICES = ("none", "auto", "required")


@dataclass(frozen=True)
class ToolsRequest:
    functions: List[Dict[str, Any]]  # each tool's "function" object, checked
    choice: str  # none, auto, required or named
    named: Optional[str] = None

    @property
    def names(self) -> List[str]:
        return [f["name"] for f in self.functions]

    def template_tools(self) -> Optional[List[Dict[str, Any]]]:
        """What the chat template's `tools` variable gets (transformers' shape)."""
        if self.choice == "none" or not self.functions:
            return None
        return [{"type": "function", "function": f} for f in self.functions]


# apply_chat_template's own arguments: the request sets them through its own fields
RESERVED_TEMPLATE_KWARGS = ("conversation", "tools", "tokenize", "add_generation_prompt")


def check_tools(req: ChatCompletionRequest) -> ToolsRequest:
    taken = sorted(set(req.chat_template_kwargs or {}) & set(RESERVED_TEMPLATE_KWARGS))
    if taken:
        raise ApiError(400, f"chat_template_kwargs may not set {', '.join(taken)} (the request's "
                            "own fields do)", "chat_template_kwargs")
    functions = [_check_tool(tool, i) for i, tool in enumerate(req.tools or [])]
    names = [f["name"] for f in functions]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ApiError(400, f"tools[{i}].function.name {name!r} is given twice",
                           f"tools[{i}].function.name")
    choice = req.tool_choice
    if choice is None:
        return ToolsRequest(functions, "auto" if functions else "none")
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise ApiError(400, f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}, "
                                f"got {choice!r}", "tool_choice")
        if choice == "required" and not functions:
            raise ApiError(400, "tool_choice \"required\" needs tools", "tool_choice")
        return ToolsRequest(functions, choice)
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise ApiError(400, "tool_choice must be {\"type\": \"function\", \"function\": "
                            "{\"name\": ...}} when it is an object", "tool_choice")
    if name not in names:
        raise ApiError(400, f"tool_choice names the function {name!r}, which is not among "
                            f"the tools ({', '.join(names) or 'none given'})", "tool_choice")
    return ToolsRequest(functions, "named", name)


def _check_tool(tool: Any, i: int) -> Dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        raise ApiError(400, f"{where} must be {{\"type\": \"function\", \"function\": {{...}}}}",
                       where)
    function = tool.get("function")
    if not isinstance(function, dict):
        raise ApiError(400, f"{where}.function must be an object", f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.match(name):
        raise ApiError(400, f"{where}.function.name must be 1-64 letters, digits, '_', '-' or "
                            f"'.', got {name!r}", f"{where}.function.name")
    params = function.get("parameters")
    if params is not None and not (isinstance(params, dict) and
                                   params.get("type", "object") == "object"):
        raise ApiError(400, f"{where}.function.parameters must be a JSON schema of an object",
                       f"{where}.function.parameters")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise ApiError(400, f"{where}.function.description must be a string",
                       f"{where}.function.description")
    return {k: v for k, v in function.items() if v is not None}


def engine_takes_json_schema(args) -> bool:
    """Whether this build constrains sampling_params.json_schema (the grammar backend is
    there and not switched off with --grammar-backend none)."""
    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    return "json_schema" in fields and getattr(args, "grammar_backend", None) != "none"


def output_format(req: ChatCompletionRequest, tools: ToolsRequest,
                  args) -> Tuple[Optional[OutputFormat], Optional[str]]:
    """(how the answers are split, the json_schema to constrain them with)."""
    reasoning = args.reasoning_parser if req.separate_reasoning else None
    schema, parser = None, None
    if tools.choice in ("required", "named"):
        if not engine_takes_json_schema(args):
            what = "\"required\"" if tools.choice == "required" else "naming a function"
            raise ApiError(400, f"tool_choice {what} is enforced with constrained decoding, "
                                "which this server does not run (start it with "
                                "--grammar-backend xgrammar), or use tool_choice \"auto\"",
                           "tool_choice")
        try:
            schema = tool_call_schema_json(tools.functions, tools.named, req.parallel_tool_calls)
        except ValueError as e:
            raise ApiError(400, f"tools: {e}", "tools") from e
        parser = JsonArrayParser.name
    elif tools.choice == "auto" and args.tool_call_parser:
        parser = args.tool_call_parser
    if reasoning is None and parser is None:
        return None, None
    return OutputFormat(reasoning, parser, tuple(tools.names)), schema


def template_message(message: ChatMessage, index: int, role: str, text: str) -> Dict[str, Any]:
    """One message as transformers' apply_chat_template takes it: an assistant turn's
    tool_calls with their arguments as objects (templates serialize them), a tool turn's
    tool_call_id."""
    out: Dict[str, Any] = {"role": role, "content": text}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:
        out["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        where = f"messages[{index}].tool_calls"
        if role != "assistant":
            raise ApiError(400, f"{where}: only assistant messages carry tool calls", where)
        out["tool_calls"] = [_template_call(call, f"{where}[{k}]")
                             for k, call in enumerate(message.tool_calls)]
    return out


def _template_call(call: Any, where: str) -> Dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, f"{where} must be {{\"type\": \"function\", \"function\": "
                            "{\"name\": ..., \"arguments\": ...}}", where)
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        arguments = parsed if isinstance(parsed, dict) else arguments
    if arguments is None:
        arguments = {}
    out = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


# ---- answers back --------------------------------------------------------------------------------
def _finish(reason: Optional[str], num_calls: int) -> Optional[str]:
    return "tool_calls" if num_calls and reason == "stop" else reason


class ChatOutputShaper:
    """Builds messages (whole answers) and deltas (streams) through OutputFormat."""

    def __init__(self, fmt: OutputFormat):
        self.fmt = fmt
        self.answers: Dict[int, AnswerSplitter] = {}

    def message(self, text: str, reason: Optional[str]) -> Tuple[AssistantMessage, Optional[str]]:
        piece = self.fmt.new_answer().feed(text, final=True)
        calls: Dict[int, ToolCall] = {}
        for d in piece.calls:
            if d.name is not None:
                calls[d.index] = ToolCall(id=d.id, function=FunctionCall(name=d.name, arguments=""))
            calls[d.index].function.arguments += d.arguments
        tool_calls = [calls[i] for i in sorted(calls)] or None
        content = piece.content if piece.content or not tool_calls else None
        reasoning = piece.reasoning if self.fmt.reasoning_parser else None
        return (AssistantMessage(content=content, reasoning_content=reasoning or None,
                                 tool_calls=tool_calls), _finish(reason, len(calls)))

    def deltas(self, index: int, text: str,
               reason: Optional[str]) -> Tuple[List[DeltaMessage], Optional[str]]:
        answer = self.answers.setdefault(index, self.fmt.new_answer())
        piece: Piece = answer.feed(text, final=reason is not None)
        out: List[DeltaMessage] = []
        if piece.reasoning or piece.content:
            out.append(DeltaMessage(reasoning_content=piece.reasoning or None,
                                    content=piece.content or None))
        for d in piece.calls:
            if d.name is not None:  # a call's first delta: index, id, name; arguments follow
                out.append(DeltaMessage(tool_calls=[ToolCallDelta(
                    index=d.index, id=d.id, type="function",
                    function=FunctionCallDelta(name=d.name, arguments=""))]))
                continue
            last = out[-1].tool_calls if out else None
            if last and last[-1].index == d.index and last[-1].id is None:
                last[-1].function.arguments += d.arguments
            else:
                out.append(DeltaMessage(tool_calls=[ToolCallDelta(
                    index=d.index, function=FunctionCallDelta(arguments=d.arguments))]))
        return out, _finish(reason, answer.num_calls)
