"""The JSON schema behind tool_choice "required" / a named function: what it accepts is
exactly a JSON array of calls to the offered tools, which the JSON-array parser reads back."""

import json

import pytest

from rollserve.frontend.tool_parsers import make_tool_parser
from rollserve.frontend.tool_schema import tool_call_schema, tool_call_schema_json

jsonschema = pytest.importorskip("jsonschema")

WEATHER = {"name": "get_weather", "description": "weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}
CLOCK = {"name": "now"}  # no parameters: any object


def valid(schema, value) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(value)


def test_required_accepts_calls_to_any_tool_and_nothing_else():
    schema = json.loads(tool_call_schema_json([WEATHER, CLOCK]))
    good = [{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "now", "parameters": {}}]
    assert valid(schema, good)
    assert not valid(schema, [])  # at least one call
    assert not valid(schema, [{"name": "get_weather", "parameters": {}}])  # city is required
    assert not valid(schema, [{"name": "other", "parameters": {}}])
    assert not valid(schema, {"name": "now", "parameters": {}})  # an array, not one object
    # what the schema admits, the parser reads back as calls
    parsed = make_tool_parser("json_array", ["get_weather", "now"]).parse(json.dumps(good))
    assert [(d.name, d.arguments) for d in parsed.calls] == [
        ("get_weather", ""), (None, '{"city": "Paris"}'), ("now", ""), (None, "{}")]


def test_named_function_is_one_call_of_it():
    schema = tool_call_schema([WEATHER, CLOCK], named="now")
    assert valid(schema, [{"name": "now", "parameters": {}}])
    assert not valid(schema, [{"name": "get_weather", "parameters": {"city": "x"}}])
    assert not valid(schema, [{"name": "now", "parameters": {}}] * 2)
    with pytest.raises(ValueError, match="no tool is named"):
        tool_call_schema([WEATHER], named="now")


def test_parallel_tool_calls_false_allows_one_call():
    schema = tool_call_schema([WEATHER, CLOCK], parallel_tool_calls=False)
    assert valid(schema, [{"name": "now", "parameters": {}}])
    assert not valid(schema, [{"name": "now", "parameters": {}}] * 2)


def test_defs_are_lifted_to_the_root():
    place = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    tool = {"name": "go", "parameters": {"type": "object", "properties": {
        "to": {"$ref": "#/$defs/Place"}}, "required": ["to"], "$defs": {"Place": place}}}
    schema = tool_call_schema([tool])
    assert schema["$defs"] == {"Place": place}
    assert valid(schema, [{"name": "go", "parameters": {"to": {"city": "Oslo"}}}])
    assert not valid(schema, [{"name": "go", "parameters": {"to": {}}}])
    other = {"name": "back", "parameters": {"type": "object", "$defs": {"Place": {"type": "string"}}}}
    with pytest.raises(ValueError, match="Place"):
        tool_call_schema([tool, other])
