"""Llama 3.1 / 3.2 / 3.3 JSON calls: `{"name": ..., "parameters": {...}}`, optionally
after `<|python_tag|>`, several separated by `;` (SGLang's `llama3`). An answer that
starts with `{` is read as calls; a JSON object without a name stays text."""

from __future__ import annotations

from rollserve.frontend.tool_parsers.base import (NORMAL, ParseResult, ToolParser, next_char,
                                                  partial_suffix)


class Llama3Parser(ToolParser):
    name = "llama3"
    start_marker = "<|python_tag|>"

    def _normal_step(self, out: ParseResult, final: bool) -> bool:
        if not self.content_seen and self.count == 0 and self.region_start is None:
            j = next_char(self)
            if j is None and not final:
                return False  # only whitespace so far: it may still open with {
            if j is not None and self.text[j] == "{":
                self._enter_region(j, j, sub="open")
                return True
        return super()._normal_step(out, final)

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        done = self._call_object_steps(out, final, after="separator")
        if done is not None:
            return done
        # "separator": `;` and whitespace between calls; another call, or text again
        j = self.pos
        while j < len(self.text) and self.text[j] in " \t\r\n;":
            j += 1
        if j >= len(self.text):
            self.pos = j
            return False
        if self.text[j] == "{":
            self._begin_object(j)
            return True
        if self.text.startswith(self.start_marker, j):
            self.pos, self.sub = j + len(self.start_marker), "open"
            return True
        if not final and partial_suffix(self.text, j, self.start_marker) == len(self.text) - j:
            self.pos = j
            return False
        self.pos, self.mode = j, NORMAL
        return True
