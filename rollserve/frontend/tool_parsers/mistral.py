"""Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (or a single object
after the marker), text before it (SGLang's `mistral`)."""

from __future__ import annotations

from rollserve.frontend.tool_parsers.base import NORMAL, ParseResult, ToolParser, next_char


class MistralParser(ToolParser):
    name = "mistral"
    start_marker = "[TOOL_CALLS]"

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        j = None if self.sub == "object" else next_char(self)
        if self.sub != "object" and j is None:
            return False
        if self.sub == "open":
            if self.text[j] == "[":
                self.in_array = True
                self.pos, self.sub = j + 1, "item"
                return True
            if self.text[j] == "{":
                self.in_array = False
                self._begin_object(j)
                return True
            return self._unexpected(out)
        if self.sub == "item":
            if self.text[j] == "{":
                self._begin_object(j)
                return True
            if self.text[j] == "]":
                self.pos, self.mode = j + 1, NORMAL
                return True
            return self._unexpected(out)
        if self.sub == "object":
            end = self._object_progress(out, final)
            if end is None:
                return self.mode != "calls" or self.sub != "object"
            self.pos = end
            if self.in_array:
                self.sub = "after_item"
            else:
                self.mode = NORMAL
            return True
        # "after_item"
        if self.text[j] == ",":
            self.pos, self.sub = j + 1, "item"
            return True
        if self.text[j] == "]":
            self.pos, self.mode = j + 1, NORMAL
            return True
        return self._unexpected(out)


class JsonArrayParser(MistralParser):
    """The answer is a JSON array of {"name", "parameters"} objects from its first
    character: what tool_choice "required" or a named function constrains the model to
    write (the schema frontend/tool_schema.py builds), whatever the model's own format."""

    name = "json_array"

    def __init__(self, tool_names):
        super().__init__(tool_names)
        self._enter_region(0, 0)
