"""DeepSeek-V3: `<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>`
(SGLang's `deepseekv3`). The name is the line after the separator; the arguments the
JSON inside the fence."""

from __future__ import annotations

from rollserve.frontend.tool_parsers.base import (NORMAL, ParseResult, ToolParser, _Call,
                                                  next_char)
from rollserve.frontend.tool_parsers.json_scan import value_end

CALLS_BEGIN = "<｜tool▁calls▁begin｜>"
CALLS_END = "<｜tool▁calls▁end｜>"
CALL_BEGIN = "<｜tool▁call▁begin｜>"
CALL_END = "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
FENCE = "```json"


class DeepSeekV3Parser(ToolParser):
    name = "deepseekv3"
    start_marker = CALLS_BEGIN

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        text = self.text
        if self.sub == "open":  # between calls
            j = next_char(self)
            if j is None:
                return False
            for marker, action in ((CALL_BEGIN, "type"), (CALLS_END, NORMAL)):
                if text.startswith(marker, j):
                    self.pos = j + len(marker)
                    if action == NORMAL:
                        self.mode = NORMAL
                    else:
                        self.sub = action
                    return True
                if not final and marker.startswith(text[j:]):
                    return False
            return self._unexpected(out)
        if self.sub == "type":  # "function" up to the separator
            k = text.find(SEP, self.pos)
            if k < 0:
                return False
            self.pos, self.sub = k + len(SEP), "name"
            return True
        if self.sub == "name":
            k = text.find("\n", self.pos)
            if k < 0:
                return False
            self.call = _Call(start=None)
            self._start_call(out, self.call, text[self.pos:k].strip())
            self.pos, self.sub = k + 1, "fence"
            return True
        if self.sub == "fence":
            j = next_char(self)
            if j is None:
                return False
            if text.startswith(FENCE, j):
                self.pos = j + len(FENCE)
            elif not final and FENCE.startswith(text[j:]):
                return False
            self.sub = "args"
            return True
        if self.sub == "args":
            j = next_char(self)
            if j is None:
                return False
            try:
                end = value_end(text, j, final)
            except ValueError:
                self._after_broken_call()
                return True
            self._send_args(out, self.call, j, end)
            if end is None:
                return False
            self.pos, self.sub = end, "call_end"
            return True
        # "call_end": the closing fence and <｜tool▁call▁end｜>
        k = text.find(CALL_END, self.pos)
        if k < 0:
            return False
        self.pos, self.sub = k + len(CALL_END), "open"
        return True
