"""--reasoning-parser: the model's reasoning (`<think>...</think>`) split from its answer,
for message.reasoning_content / delta.reasoning_content (SGLang's names).

* deepseek-r1, qwen3-thinking: the template opens the think block in the prompt, so the
  answer starts in reasoning; everything before `</think>` is reasoning (a `<think>` the
  model writes anyway is dropped).
* qwen3: reasoning only when the answer opens with `<think>` (Qwen3's hybrid models write
  it themselves; with enable_thinking false the template closes an empty block in the
  prompt and the whole answer is content).

An answer cut off inside its reasoning is all reasoning. Whitespace around the reasoning
and at the start of the content is dropped. As with the tool parsers, each character is
decided once the text after it can no longer change the decision, so streamed deltas
join up to the whole answer's split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from rollserve.frontend.tool_parsers.base import partial_suffix
from rollserve.frontend.tool_parsers.json_scan import WHITESPACE, hold_trailing_ws

THINK_START, THINK_END = "<think>", "</think>"

# parser name -> whether the answer starts inside the reasoning
REASONING_PARSERS: Dict[str, bool] = {"deepseek-r1": True, "qwen3-thinking": True, "qwen3": False}


@dataclass
class ReasoningDelta:
    reasoning: str = ""
    content: str = ""


class ReasoningParser:
    def __init__(self, name: str):
        self.forced = REASONING_PARSERS[name]
        self.text = ""
        self.pos = 0
        self.mode = "start"  # start -> reasoning -> content
        self.held = ""  # trailing whitespace of the reasoning so far
        self.reasoning_seen = False
        self.content_seen = False
        self.after_think = False  # content follows </think>: its leading whitespace goes

    def feed(self, delta: str, final: bool = False) -> ReasoningDelta:
        self.text += delta
        out = ReasoningDelta()
        while self._step(out, final):
            pass
        return out

    def parse(self, text: str) -> ReasoningDelta:
        return self.feed(text, final=True)

    def _step(self, out: ReasoningDelta, final: bool) -> bool:
        text = self.text
        if self.mode == "start":  # an opening <think>, after whitespace?
            j = self.pos
            while j < len(text) and text[j] in WHITESPACE:
                j += 1
            rest = text[j:]
            if not final and THINK_START.startswith(rest):
                return False  # it may still become <think>
            if rest.startswith(THINK_START):
                self.pos, self.mode = j + len(THINK_START), "reasoning"
            else:
                self.mode = "reasoning" if self.forced else "content"
            return True
        if self.mode == "reasoning":
            k = text.find(THINK_END, self.pos)
            if k >= 0:
                self._reasoning(out, text[self.pos:k])
                self.held = ""
                self.pos, self.mode = k + len(THINK_END), "content"
                self.after_think = True
                return True
            end = len(text) if final else len(text) - partial_suffix(text, self.pos, THINK_END)
            self._reasoning(out, text[self.pos:end])
            self.pos = end
            return False
        piece = text[self.pos:]
        if self.after_think and not self.content_seen:
            piece = piece.lstrip(WHITESPACE)
        if piece:
            out.content += piece
            self.content_seen = True
        self.pos = len(text)
        return False

    def _reasoning(self, out: ReasoningDelta, piece: str) -> None:
        if not self.reasoning_seen:
            piece = piece.lstrip(WHITESPACE)
        body, self.held = hold_trailing_ws(self.held, piece)
        if body:
            out.reasoning += body
            self.reasoning_seen = True
