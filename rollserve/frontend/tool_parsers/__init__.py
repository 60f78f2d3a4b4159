"""Tool-call parsers by --tool-call-parser name (SGLang's names), one format per file."""

from __future__ import annotations

from typing import Collection, Dict, Type

from rollserve.frontend.tool_parsers.base import ParseResult, ToolCallDelta, ToolParser
from rollserve.frontend.tool_parsers.deepseekv3 import DeepSeekV3Parser
from rollserve.frontend.tool_parsers.llama3 import Llama3Parser
from rollserve.frontend.tool_parsers.mistral import JsonArrayParser, MistralParser
from rollserve.frontend.tool_parsers.qwen25 import Qwen25Parser

TOOL_CALL_PARSERS: Dict[str, Type[ToolParser]] = {
    "qwen25": Qwen25Parser,
    "qwen": Qwen25Parser,  # SGLang's newer name for the same <tool_call> format
    "llama3": Llama3Parser,
    "mistral": MistralParser,
    "deepseekv3": DeepSeekV3Parser,
}


def make_tool_parser(name: str, tool_names: Collection[str]) -> ToolParser:
    """A fresh parser (one per answer: it keeps the answer's state)."""
    if name == JsonArrayParser.name:
        return JsonArrayParser(tool_names)
    return TOOL_CALL_PARSERS[name](tool_names)


__all__ = ["TOOL_CALL_PARSERS", "ParseResult", "ToolCallDelta", "ToolParser", "make_tool_parser",
           "JsonArrayParser"]
