"""The JSON schema that makes tool_choice "required" or a named function binding: the
answer must be a JSON array of {"name": <a tool's name>, "parameters": <its arguments>}
(SGLang's construction, read back by tool_parsers.JsonArrayParser). Sent to the engine as
sampling_params.json_schema, which the grammar backend enforces."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

EMPTY_PARAMETERS = {"type": "object", "properties": {}}


def _call_schema(function: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [function["name"]]},
            "parameters": function.get("parameters") or EMPTY_PARAMETERS,
        },
        "required": ["name", "parameters"],
    }


def _shared_defs(functions: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Every tool's $defs, lifted to the root where "#/$defs/..." references resolve.
    Raises ValueError when two tools define one name differently."""
    defs: Dict[str, Any] = {}
    for function in functions:
        for name, schema in ((function.get("parameters") or {}).get("$defs") or {}).items():
            if name in defs and defs[name] != schema:
                raise ValueError(f"two tools define $defs {name!r} differently")
            defs[name] = schema
    return defs


def tool_call_schema(functions: List[Dict[str, Any]], named: Optional[str] = None,
                     parallel_tool_calls: bool = True) -> Dict[str, Any]:
    """`functions`: the request's tools' "function" objects. `named`: the one function
    tool_choice names (one call of it), else any of them, at least one call."""
    if named is not None:
        chosen = [f for f in functions if f["name"] == named]
        if not chosen:
            raise ValueError(f"no tool is named {named!r}")
        schema = {"type": "array", "minItems": 1, "maxItems": 1, "items": _call_schema(chosen[0])}
    else:
        chosen = functions
        schema = {"type": "array", "minItems": 1,
                  "items": {"anyOf": [_call_schema(f) for f in functions]}}
        if not parallel_tool_calls:
            schema["maxItems"] = 1
    defs = _shared_defs(chosen)
    if defs:
        schema["$defs"] = defs
    return schema


def tool_call_schema_json(functions: List[Dict[str, Any]], named: Optional[str] = None,
                          parallel_tool_calls: bool = True) -> str:
    """The schema as the JSON string sampling_params.json_schema takes (SGLang's shape)."""
    return json.dumps(tool_call_schema(functions, named, parallel_tool_calls))
