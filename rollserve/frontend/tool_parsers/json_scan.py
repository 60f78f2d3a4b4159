"""Incremental scanning of JSON text that may still be arriving.

The tool-call parsers read a model's output token by token, so every function here
looks at a prefix of the final text and answers with what that prefix already settles:
where a value ends, or None while it could still go on. Each answer depends only on the
characters it has seen, which is what makes a streamed parse agree with a whole one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

WHITESPACE = " \t\r\n"
_SCALAR_END = ",}] \t\r\n"


class Malformed(ValueError):
    """The text cannot be the JSON the parser expected, whatever follows."""


def hold_trailing_ws(held: str, text: str):
    """(what can be sent, whitespace to hold back) for `text` after the held whitespace:
    trailing whitespace waits until more text shows whether anything follows it."""
    text = held + text
    body = text.rstrip(WHITESPACE)
    return body, text[len(body):]


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in WHITESPACE:
        i += 1
    return i


def string_end(text: str, i: int) -> Optional[int]:
    """text[i] is '"': the index after the closing quote, or None if not there yet."""
    j = i + 1
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


def value_end(text: str, i: int, final: bool = False) -> Optional[int]:
    """The index after the JSON value starting at text[i], or None while it is incomplete.
    Objects and arrays are matched by depth (strings skipped), not validated inside; a bare
    number or literal ends at a delimiter, or at the end of the text when `final`."""
    if i >= len(text):
        return None
    c = text[i]
    if c == '"':
        return string_end(text, i)
    if c in "{[":
        depth, j = 0, i
        while j < len(text):
            c = text[j]
            if c == '"':
                end = string_end(text, j)
                if end is None:
                    return None
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    if c in "}]:,":
        raise Malformed(f"unexpected {c!r} where a value starts")
    j = i
    while j < len(text) and text[j] not in _SCALAR_END:
        j += 1
    return j if j < len(text) or final else None


@dataclass
class Member:
    key: str
    value_start: Optional[int] = None  # None: only the key (and maybe the colon) so far
    value_end: Optional[int] = None  # None: the value is still arriving


@dataclass
class ObjectScan:
    members: List[Member] = field(default_factory=list)
    end: Optional[int] = None  # the index after the closing brace, once it came
    error: Optional[str] = None  # why the text stopped being an object (members: those before)

    def member(self, *keys: str) -> Optional[Member]:
        """The first member under any of `keys`, in the order the keys are given."""
        for key in keys:
            for m in self.members:
                if m.key == key:
                    return m
        return None


def scan_object(text: str, i: int, final: bool = False) -> ObjectScan:
    """The top-level members of the object starting at text[i] == '{', as far as the text
    goes. Once the text cannot be an object any more, `error` says why and the members are
    those complete before that point (what any shorter prefix of the text showed)."""
    out = ObjectScan()
    try:
        _scan_members(text, i, final, out)
    except Malformed as e:
        out.error = str(e)
        if out.members and out.members[-1].value_end is None:
            out.members[-1].value_start = None  # a value can only be refused at its start
    return out


def _scan_members(text: str, i: int, final: bool, out: ObjectScan) -> ObjectScan:
    import json

    j = skip_ws(text, i + 1)
    if j < len(text) and text[j] == "}":
        out.end = j + 1
        return out
    while j < len(text):
        if text[j] != '"':
            raise Malformed(f"expected a key at {text[j]!r}")
        key_end = string_end(text, j)
        if key_end is None:
            return out
        try:
            key = json.loads(text[j:key_end])
        except ValueError as e:
            raise Malformed(f"bad key {text[j:key_end]!r}") from e
        member = Member(key)
        out.members.append(member)
        j = skip_ws(text, key_end)
        if j >= len(text):
            return out
        if text[j] != ":":
            raise Malformed(f"expected ':' after key {key!r}")
        j = skip_ws(text, j + 1)
        if j >= len(text):
            return out
        member.value_start = j
        end = value_end(text, j, final)
        if end is None:
            return out
        member.value_end = end
        j = skip_ws(text, end)
        if j >= len(text):
            return out
        if text[j] == "}":
            out.end = j + 1
            return out
        if text[j] != ",":
            raise Malformed(f"expected ',' or '}}' after the value of {key!r}")
        j = skip_ws(text, j + 1)
    return out
