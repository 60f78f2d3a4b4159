"""One chat answer's text split into what the OpenAI message carries: reasoning
(--reasoning-parser), content, and tool calls (--tool-call-parser, or the JSON array a
required / named tool_choice constrains the answer to). The reasoning is split first; the
tool parser reads only what follows it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Collection, List, Optional

from rollserve.frontend.reasoning_parser import ReasoningParser
from rollserve.frontend.tool_parsers import ToolCallDelta, make_tool_parser


@dataclass
class Piece:
    reasoning: str = ""
    content: str = ""
    calls: List[ToolCallDelta] = field(default_factory=list)


@dataclass(frozen=True)
class OutputFormat:
    """What a request's answers go through (None: that step is off)."""

    reasoning_parser: Optional[str] = None
    tool_parser: Optional[str] = None  # a TOOL_CALL_PARSERS name or "json_array"
    tool_names: Collection[str] = ()

    def new_answer(self) -> "AnswerSplitter":
        return AnswerSplitter(self)


class AnswerSplitter:
    """The state of one answer (one choice) as its text arrives."""

    def __init__(self, fmt: OutputFormat):
        self.reasoning = ReasoningParser(fmt.reasoning_parser) if fmt.reasoning_parser else None
        self.tools = make_tool_parser(fmt.tool_parser, fmt.tool_names) if fmt.tool_parser else None
        self.num_calls = 0

    def feed(self, delta: str, final: bool = False) -> Piece:
        out = Piece()
        content = delta
        if self.reasoning is not None:
            split = self.reasoning.feed(delta, final)
            out.reasoning, content = split.reasoning, split.content
        if self.tools is None:
            out.content = content
            return out
        parsed = self.tools.feed(content, final)
        out.content, out.calls = parsed.content, parsed.calls
        self.num_calls = self.tools.count
        return out
