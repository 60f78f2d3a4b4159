"""Qwen2.5 / Qwen3 / Hermes: each call is `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`,
text may come before and between them (SGLang's `qwen25`, also named `qwen`)."""

from __future__ import annotations

from rollserve.frontend.tool_parsers.base import NORMAL, ParseResult, ToolParser, partial_suffix


class Qwen25Parser(ToolParser):
    name = "qwen25"
    start_marker = "<tool_call>"
    end_marker = "</tool_call>"

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        done = self._call_object_steps(out, final, after="close")
        if done is not None:
            return done
        # "close": whatever stands between the object and </tool_call> is dropped
        k = self.text.find(self.end_marker, self.pos)
        if k >= 0:
            self.pos, self.mode = k + len(self.end_marker), NORMAL
            return True
        self.pos = len(self.text) - partial_suffix(self.text, self.pos, self.end_marker)
        return False

    def _after_broken_call(self) -> None:
        self.sub = "close"  # skip to this call's </tool_call>, then back to text
