"""Feeding a parser an answer cut at chosen places, and joining what it gives back."""

from typing import Callable, Dict, List, Sequence, Tuple

from rollserve.frontend.tool_parsers import make_tool_parser

Calls = Dict[int, Tuple[str, str]]  # index -> (name, arguments)


def join(results) -> Tuple[str, Calls, List[str]]:
    """(content, calls, ids) from a parser's results; checks OpenAI's delta order: a
    call's first delta has its id and name, later ones arguments only."""
    content, names, args, ids = "", {}, {}, []
    for r in results:
        content += r.content
        for d in r.calls:
            if d.name is not None:
                assert d.index not in names and d.id.startswith("call_") and d.arguments == ""
                names[d.index], args[d.index] = d.name, ""
                ids.append(d.id)
            else:
                assert d.index in names and d.id is None, "arguments before the call's name"
                args[d.index] += d.arguments
    assert sorted(names) == list(range(len(names)))
    return content, {i: (names[i], args[i]) for i in names}, ids


def parse_whole(parser: str, text: str, tools: Sequence[str]) -> Tuple[str, Calls]:
    content, calls, _ = join([make_tool_parser(parser, tools).parse(text)])
    return content, calls


def parse_in_pieces(parser: str, pieces: Sequence[str], tools: Sequence[str]) -> Tuple[str, Calls]:
    p = make_tool_parser(parser, tools)
    results = [p.feed(piece) for piece in pieces] + [p.feed("", final=True)]
    content, calls, _ = join(results)
    return content, calls


def cuts(text: str) -> List[List[str]]:
    """The text one character at a time, cut once at every position, and in threes."""
    out = [list(text)]
    out += [[text[:i], text[i:]] for i in range(1, len(text))]
    out.append([text[i:i + 3] for i in range(0, len(text), 3)])
    return out


def assert_split_invariant(parse_pieces: Callable, whole, text: str) -> None:
    for pieces in cuts(text):
        assert parse_pieces(pieces) == whole, pieces
