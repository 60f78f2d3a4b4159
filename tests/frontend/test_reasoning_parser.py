"""--reasoning-parser on fixed strings, whole and cut into deltas at every position."""

import pytest

from rollserve.frontend.reasoning_parser import ReasoningParser
from tests.frontend.tool_parsers.splits import cuts

CASES = [
    ("deepseek-r1", "<think>\nAdd them: 2+2.\n</think>\n\nThe answer is 4.", "Add them: 2+2.",
     "The answer is 4."),
    # R1's template opens the block in the prompt: text before </think> is reasoning
    ("deepseek-r1", "Add them.  \n</think>\n\n4", "Add them.", "4"),
    ("deepseek-r1", "cut off while thinking", "cut off while thinking", ""),
    ("qwen3-thinking", "thinking</think>answer ", "thinking", "answer "),
    ("qwen3", "<think>\nhmm\n</think>\n\nfour", "hmm", "four"),
    ("qwen3", "  <think>x</think>y", "x", "y"),
    # qwen3 reasons only when the answer opens with <think> (enable_thinking false: no block)
    ("qwen3", " Plain answer, <think> later is text", "", " Plain answer, <think> later is text"),
    ("qwen3", "<thin", "", "<thin"),
    ("qwen3", "", "", ""),
]


def whole(name, text):
    d = ReasoningParser(name).parse(text)
    return d.reasoning, d.content


def in_pieces(name, pieces):
    p = ReasoningParser(name)
    reasoning = content = ""
    for piece in list(pieces) + [None]:
        d = p.feed("", final=True) if piece is None else p.feed(piece)
        reasoning, content = reasoning + d.reasoning, content + d.content
    return reasoning, content


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_split(name, text, reasoning, content):
    assert whole(name, text) == (reasoning, content)


@pytest.mark.parametrize("name,text,reasoning,content", CASES)
def test_streamed_split_joins_up(name, text, reasoning, content):
    for pieces in cuts(text):
        assert in_pieces(name, pieces) == (reasoning, content), pieces


def test_reasoning_streams_before_the_block_ends():
    p = ReasoningParser("qwen3")
    assert p.feed("<think>step one").reasoning == "step one"
    d = p.feed(" two</thi")
    assert (d.reasoning, d.content) == (" two", "")
    d = p.feed("nk>\n\nfour", final=True)
    assert (d.reasoning, d.content) == ("", "four")
