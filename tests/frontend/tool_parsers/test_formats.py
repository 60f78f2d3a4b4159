"""Each --tool-call-parser format on fixed model outputs, whole and cut into deltas at
every position (the streamed deltas must join up to the whole answer's parse)."""

import json

import pytest

from tests.frontend.tool_parsers.splits import (assert_split_invariant, parse_in_pieces,
                                                parse_whole)

TOOLS = ("get_weather", "add")
WEATHER = '{"city": "Paris", "unit": "celsius"}'
ADD = '{"a": 1, "b": [2, "]}"]}'

# (parser, model output, expected content, expected calls)
CASES = [
    ("qwen25", f'<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}\n</tool_call>',
     "", {0: ("get_weather", WEATHER)}),
    ("qwen25", f'Let me check both.\n<tool_call>\n{{"name": "get_weather", "arguments": {WEATHER}}}'
               f'\n</tool_call>\n<tool_call>\n{{"arguments": {ADD}, "name": "add"}}\n</tool_call>',
     "Let me check both.", {0: ("get_weather", WEATHER), 1: ("add", ADD)}),
    ("qwen", 'No tools needed: 2 < 3 and <tool is not a tag.',
     "No tools needed: 2 < 3 and <tool is not a tag.", {}),
    ("qwen25", '<tool_call>not json</tool_call> so it stays text',
     "<tool_call>not json</tool_call> so it stays text", {}),
    ("qwen25", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>', "", {}),
    ("qwen25", '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1}"}</tool_call>', "",
     {0: ("add", '{"a": 1}')}),
    # broken after its arguments: the call stands, the rest of its block is dropped
    ("qwen25", '<tool_call>\n{"name": "add", "arguments": {"a": 1}"}\n</tool_call> ok', " ok",
     {0: ("add", '{"a": 1}')}),
    ("llama3", '{"name": "add", "parameters": {"a": 1} oops', "", {0: ("add", '{"a": 1}')}),
    ("llama3", f'<|python_tag|>{{"name": "get_weather", "parameters": {WEATHER}}}', "",
     {0: ("get_weather", WEATHER)}),
    ("llama3", f'  {{"name": "get_weather", "parameters": {WEATHER}}}; {{"name": "add", '
               f'"parameters": {ADD}}}', "", {0: ("get_weather", WEATHER), 1: ("add", ADD)}),
    ("llama3", '{"answer": 42}', '{"answer": 42}', {}),
    ("llama3", 'The answer is {"x": 1}.', 'The answer is {"x": 1}.', {}),
    ("mistral", f'Sure. [TOOL_CALLS] [{{"name": "get_weather", "arguments": {WEATHER}}}, '
                f'{{"name": "add", "arguments": {ADD}}}]', "Sure.",
     {0: ("get_weather", WEATHER), 1: ("add", ADD)}),
    ("mistral", '[TOOL_CALLS] {"name": "add"}', "", {0: ("add", "{}")}),
    ("deepseekv3", "Checking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>"
                   f"get_weather\n```json\n{WEATHER}\n```<｜tool▁call▁end｜>\n"
                   "<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n```json\n"
                   f"{ADD}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Checking.",
     {0: ("get_weather", WEATHER), 1: ("add", ADD)}),
    ("json_array", f'[{{"name": "add", "parameters": {ADD}}}, {{"name": "get_weather", '
                   f'"parameters": {WEATHER}}}]', "", {0: ("add", ADD), 1: ("get_weather", WEATHER)}),
]


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_whole_answer(parser, text, content, calls):
    assert parse_whole(parser, text, TOOLS) == (content, calls)
    for _, arguments in calls.values():
        json.loads(arguments)


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_deltas_join_up_to_the_whole_answer(parser, text, content, calls):
    assert_split_invariant(lambda pieces: parse_in_pieces(parser, pieces, TOOLS),
                           (content, calls), text)


def test_arguments_stream_before_the_call_ends():
    from rollserve.frontend.tool_parsers import make_tool_parser

    p = make_tool_parser("qwen25", TOOLS)
    first = p.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert [(d.name, d.arguments) for d in first.calls] == [("get_weather", ""),
                                                            (None, '{"city": "Pa')]
    assert [d.arguments for d in p.feed('ris"}}\n</tool').calls] == ['ris"}']
    assert p.feed("_call>", final=True).calls == []


def test_arguments_are_the_text_the_model_wrote_even_when_not_json():
    # OpenAI's contract too: arguments are the model's text, for the client to validate
    text = '<tool_call>{"name": "add", "arguments": {"a": 1+2}}</tool_call>'
    assert parse_whole("qwen25", text, TOOLS) == ("", {0: ("add", '{"a": 1+2}')})
    assert_split_invariant(lambda pieces: parse_in_pieces("qwen25", pieces, TOOLS),
                           ("", {0: ("add", '{"a": 1+2}')}), text)


def test_cut_off_answers():
    # max_tokens ran out inside a call: what came is kept, a call without arguments gets {}
    assert parse_whole("qwen25", '<tool_call>\n{"name": "add", "argu', TOOLS) == (
        "", {0: ("add", "{}")})
    assert parse_whole("qwen25", '<tool_call>\n{"name": "add", "arguments": {"a": 1', TOOLS) == (
        "", {0: ("add", '{"a": 1')})
    # before the name was complete: the text is content
    assert parse_whole("qwen25", 'Hi <tool_call>\n{"na', TOOLS) == ('Hi <tool_call>\n{"na', {})
    assert parse_whole("mistral", "A [TOOL_CA", TOOLS) == ("A [TOOL_CA", {})


def test_whitespace_only_content_beside_calls_is_dropped_but_kept_in_plain_answers():
    assert parse_whole("qwen25", '\n<tool_call>{"name": "add", "arguments": {}}</tool_call>\n',
                       TOOLS) == ("", {0: ("add", "{}")})
    assert parse_whole("qwen25", " two  spaces \n", TOOLS) == (" two  spaces \n", {})


FRAGMENTS = ['<tool_call>', '</tool_call>', '<|python_tag|>', '[TOOL_CALLS]', '{', '}', '[', ']',
             '"name"', '"arguments"', '"parameters"', ': ', ', ', '"add"', '"get_weather"', '"x"',
             '1', ';', '\n', ' ', 'text', '"', '\\', '<', '```json\n', '\n```',
             "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>function<｜tool▁sep｜>add\n",
             "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>"]
PARSERS = ("qwen25", "llama3", "mistral", "deepseekv3", "json_array")


@pytest.mark.parametrize("parser", PARSERS)
def test_any_text_parses_the_same_whole_and_char_by_char(parser):
    """Random mixes of markers, JSON pieces and text: streamed one character at a time,
    the deltas join up to the whole parse (no text lost or repeated, the same calls)."""
    import random

    rng = random.Random(parser)
    for _ in range(150):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))
        whole = parse_whole(parser, text, TOOLS)
        assert parse_in_pieces(parser, list(text), TOOLS) == whole, text


@pytest.mark.parametrize("parser,text,content,calls", CASES)
def test_damaged_answers_parse_the_same_whole_and_char_by_char(parser, text, content, calls):
    """The fixed answers with a character dropped, doubled or replaced at random places
    (a model's near-misses): still no difference between whole and streamed parses."""
    import random

    rng = random.Random(text)
    for _ in range(25):
        i = rng.randrange(len(text))
        damaged = rng.choice([text[:i] + text[i + 1:], text[:i] + text[i] + text[i:],
                              text[:i] + rng.choice('{}[]",:; \n<>') + text[i + 1:]])
        whole = parse_whole(parser, damaged, TOOLS)
        assert parse_in_pieces(parser, list(damaged), TOOLS) == whole, damaged
