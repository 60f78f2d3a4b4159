"""Qwen2.5 / Qwen3 / Hermes: each call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
text may come before and between them (SGLang's `qwen25`, also named `qwen`)."""

from __future__ import annotations

from rollserve.frontend.tool_parsers.base import (NORMAL, ParseResult, ToolParser, next_char,
                                                  partial_suffix)


class Qwen25Parser(ToolParser):
    name = "qwen25"
    start_marker = "<tool_call>"
    end_marker = "</tool_call>"

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        if self.sub == "open":
            j = next_char(self)
            if j is None:
                return False
            if self.text[j] != "{":
                return self._unexpected(out)
            self._begin_object(j)
            return True
        if self.sub == "object":
            end = self._object_progress(out, final)
            if end is None:
                return self.mode != "calls" or self.sub != "object"
            self.pos, self.sub = end, "close"
            return True
        # "close": whatever stands between the object and </tool_call> is dropped
        k = self.text.find(self.end_marker, self.pos)
        if k >= 0:
            self.pos, self.mode = k + len(self.end_marker), NORMAL
            return True
        self.pos = len(self.text) - partial_suffix(self.text, self.pos, self.end_marker)
        return False

    def _after_broken_call(self) -> None:
        self.sub = "close"  # skip to this call's </tool_call>, then back to text
