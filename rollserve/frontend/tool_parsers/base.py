"""What every tool-call parser shares: the stream of text in, content and tool-call
deltas out (OpenAI's shape: a call's first delta carries its index, id and name, later
ones fragments of its arguments).

A parser sees the model's output as it arrives (`feed(delta)`, then `feed("", final=True)`)
and parses a whole answer as one feed (`parse(text)`). Every decision is taken on a
character only once the text after it can no longer change it, so however the text is
cut into deltas, the deltas joined equal the whole answer's parse; the tests cut answers
at every position to hold parsers to that.

Arguments are the model's own JSON text for them, fragment by fragment (not
re-serialized), so a client that joins the fragments gets exactly the non-streamed
string. A call naming a function that is not among the request's tools is dropped; a
region that turns out not to be a call (no name, not JSON) is given back as content.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Collection, List, Optional

from rollserve.frontend.tool_parsers.json_scan import (Malformed, hold_trailing_ws,
                                                       scan_object, skip_ws)

NORMAL, CALLS, PASSTHROUGH, DISCARD = "normal", "calls", "passthrough", "discard"


@dataclass
class ToolCallDelta:
    index: int
    id: Optional[str] = None  # set on the call's first delta only
    name: Optional[str] = None  # idem
    arguments: str = ""


@dataclass
class ParseResult:
    content: str = ""
    calls: List[ToolCallDelta] = field(default_factory=list)


@dataclass
class _Call:
    start: Optional[int]  # where its JSON object starts (None for formats without one)
    name: Optional[str] = None
    index: Optional[int] = None  # set once the call was emitted
    skip: bool = False  # names a function the request did not offer
    args_start: Optional[int] = None
    args_sent: int = 0
    args_done: bool = False


class NotACall(Exception):
    """A complete JSON object without a name: the model wrote JSON, not a call."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def partial_suffix(text: str, start: int, marker: str) -> int:
    """Length of the longest end of text[start:] that is a proper prefix of `marker`
    (text that must wait: it may become the marker)."""
    for n in range(min(len(marker) - 1, len(text) - start), 0, -1):
        if marker.startswith(text[len(text) - n:]):
            return n
    return 0


class ToolParser:
    name = ""
    start_marker = ""

    def __init__(self, tool_names: Collection[str]):
        self.tools = frozenset(tool_names)
        self.text = ""
        self.pos = 0  # text before pos is consumed
        self.mode = NORMAL
        self.sub = ""  # the format's own state inside CALLS
        self.count = 0  # calls emitted
        self.region_start: Optional[int] = None  # where the current call region began
        self.region_calls = 0
        self.call: Optional[_Call] = None
        self.held = ""  # trailing whitespace of the content, sent once more content follows
        self.content_seen = False

    # ---- the interface -------------------------------------------------------------------
    def feed(self, delta: str, final: bool = False) -> ParseResult:
        self.text += delta
        out = ParseResult()
        while self._step(out, final):
            pass
        if final:
            self._finish(out)
        return out

    def parse(self, text: str) -> ParseResult:
        return self.feed(text, final=True)

    # ---- the loop ------------------------------------------------------------------------
    def _step(self, out: ParseResult, final: bool) -> bool:
        """Consume what can be decided; False when more text is needed."""
        if self.mode == NORMAL:
            return self._normal_step(out, final)
        if self.mode == CALLS:
            return self._calls_step(out, final)
        if self.pos < len(self.text):
            if self.mode == PASSTHROUGH:
                self._content(out, self.text[self.pos:])
            self.pos = len(self.text)
        return False

    def _normal_step(self, out: ParseResult, final: bool) -> bool:
        k = self.text.find(self.start_marker, self.pos)
        if k >= 0:
            self._content(out, self.text[self.pos:k])
            self._enter_region(k, k + len(self.start_marker))
            return True
        end = len(self.text) if final else len(self.text) - partial_suffix(
            self.text, self.pos, self.start_marker)
        if end > self.pos:
            self._content(out, self.text[self.pos:end])
            self.pos = end
        return False

    def _enter_region(self, start: int, pos: int, sub: str = "open") -> None:
        self.mode, self.sub, self.region_start, self.pos = CALLS, sub, start, pos
        self.region_calls = 0
        self.call = None

    def _calls_step(self, out: ParseResult, final: bool) -> bool:
        raise NotImplementedError

    def _finish(self, out: ParseResult) -> None:
        c = self.call
        if self.mode == CALLS:
            if c is not None and c.index is not None:
                if not c.args_done and c.args_sent == 0:
                    self._emit_args(out, c, "{}")  # cut off before its arguments
            elif self.region_calls == 0 and (c is None or not c.skip):
                self._passthrough(out)  # cut off before it was a call: it is text
        if self.count == 0 and self.held:
            out.content += self.held
        self.held = ""

    # ---- content ---------------------------------------------------------------------------
    def _content(self, out: ParseResult, text: str) -> None:
        """Content, but whitespace at its end waits: dropped if only calls follow it."""
        body, self.held = hold_trailing_ws(self.held, text)
        if body:
            out.content += body
            self.content_seen = True

    def _passthrough(self, out: ParseResult) -> None:
        """The region was not a call after all: its text, and all that follows, is content."""
        self._content(out, self.text[self.region_start:])
        self.pos = len(self.text)
        self.mode = PASSTHROUGH

    def _unexpected(self, out: ParseResult) -> bool:
        if self.region_calls == 0:
            self._passthrough(out)
        else:
            self.mode = DISCARD
        return True

    # ---- calls -----------------------------------------------------------------------------
    def _start_call(self, out: ParseResult, c: _Call, name: str) -> None:
        c.name = name
        self.region_calls += 1
        if name not in self.tools:
            c.skip = True
            return
        c.index = self.count
        self.count += 1
        out.calls.append(ToolCallDelta(c.index, new_call_id(), name, ""))

    def _emit_args(self, out: ParseResult, c: _Call, fragment: str) -> None:
        if fragment:
            out.calls.append(ToolCallDelta(c.index, arguments=fragment))

    def _send_args(self, out: ParseResult, c: _Call, start: int, end: Optional[int]) -> None:
        """The arguments' JSON text from `start` (to `end` once known) as fragments."""
        c.args_start = start
        if c.index is None or c.args_done:
            return
        if self.text[start] == '"':  # some models quote the object: send what it holds
            if end is not None:
                self._emit_args(out, c, json.loads(self.text[start:end]))
                c.args_done = True
            return
        upto = len(self.text) if end is None else end
        self._emit_args(out, c, self.text[start + c.args_sent:upto])
        c.args_sent = upto - start
        c.args_done = end is not None

    def _object_step(self, out: ParseResult, final: bool) -> Optional[int]:
        """Advance the call whose JSON object starts at self.call.start ({"name": ...,
        "arguments"/"parameters": {...}}); its end index once the object closed."""
        c = self.call
        scan = scan_object(self.text, c.start, final)
        name = scan.member("name")
        if c.name is None and name is not None and name.value_end is not None:
            raw = self.text[name.value_start:name.value_end]
            if not raw.startswith('"'):
                raise Malformed("name is not a string")
            self._start_call(out, c, json.loads(raw))
        args = scan.member("arguments", "parameters")
        if args is not None and args.value_start is not None:
            self._send_args(out, c, args.value_start, args.value_end)
        if scan.error is not None:
            raise Malformed(scan.error)
        if scan.end is None:
            return None
        if c.name is None:
            raise NotACall()
        if c.index is not None and not c.args_done and args is None:
            self._emit_args(out, c, "{}")
            c.args_done = True
        return scan.end

    def _object_progress(self, out: ParseResult, final: bool) -> Optional[int]:
        """_object_step, with a broken call handled: text if nothing was emitted for it,
        else the call ends there and the format's `_after_broken_call` decides the rest."""
        try:
            return self._object_step(out, final)
        except (Malformed, NotACall, ValueError):
            c = self.call
            if c.name is None and self.region_calls == 0:
                self._passthrough(out)
            else:
                if c.index is not None and not c.args_done and c.args_sent == 0:
                    self._emit_args(out, c, "{}")
                self._after_broken_call()
            return None

    def _after_broken_call(self) -> None:
        self.mode = DISCARD

    def _call_object_steps(self, out: ParseResult, final: bool, after: str) -> Optional[bool]:
        """The "open" state (whitespace, then the call's '{') and the "object" state of
        formats with one JSON object a call; `after`: the state once the object closed.
        None in any other state."""
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
                return self.mode != CALLS or self.sub != "object"
            self.pos, self.sub = end, after
            return True
        return None

    def _begin_object(self, j: int) -> None:
        self.call = _Call(start=j)
        self.pos = j
        self.sub = "object"


def next_char(parser: ToolParser) -> Optional[int]:
    """Index of the next non-whitespace character from parser.pos (None: none yet)."""
    j = skip_ws(parser.text, parser.pos)
    return j if j < len(parser.text) else None
