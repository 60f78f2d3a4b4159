"""OpenAI's (and vLLM's) ways of asking for structured output, mapped onto the one entry
point the engine has: sampling_params json_schema / regex / ebnf (scheduler/grammar.py).

* response_format {"type": "json_object"}: any JSON object (SGLang sends the schema
  {"type": "object"});
* response_format {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}:
  the schema ("strict" changes nothing: the output always matches it);
* SGLang's extra request fields `regex` and `ebnf`;
* vLLM's structured_outputs {json | regex | grammar | choice | json_object}.

Each is checked here so that a 400 names the field the client sent."""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

from rollserve.api.protocol import ApiError
from rollserve.frontend.grammar_check import grammar_problem

ANY_JSON_OBJECT = '{"type": "object"}'


def structured_output_params(req: Any, backend: str) -> Dict[str, str]:
    """The sampling_params fields for an OpenAI request's constraint ({} when none)."""
    asked: List[Tuple[str, str, str]] = []  # (request field, grammar kind, grammar text)
    if req.response_format is not None:
        found = _from_response_format(req.response_format)
        if found:
            asked.append(("response_format", *found))
    for name in ("regex", "ebnf"):
        value = getattr(req, name, None)
        if value is not None:
            if not isinstance(value, str):
                raise ApiError(400, f"{name} must be a string", name)
            asked.append((name, name, value))
    if req.structured_outputs:
        asked.append(("structured_outputs", *_from_structured_outputs(req.structured_outputs)))
    if not asked:
        return {}
    if len(asked) > 1:
        names = [a[0] for a in asked]
        raise ApiError(400, f"only one constraint may be given, got {names}", names[1])
    field, kind, text = asked[0]
    if backend == "none":
        raise ApiError(400, "constrained decoding is off on this server (--grammar-backend none)",
                       field)
    problem = grammar_problem(kind, text)
    if problem:
        raise ApiError(400, f"{field}: {problem}", field)
    return {kind: text}


def _from_response_format(fmt: Any) -> Optional[Tuple[str, str]]:
    if not isinstance(fmt, dict):
        raise ApiError(400, "response_format must be an object", "response_format")
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json_schema", ANY_JSON_OBJECT
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict):
            raise ApiError(400, "response_format.json_schema must be an object with a schema",
                           "response_format.json_schema")
        schema = spec.get("schema", spec.get("schema_"))  # schema_: pydantic-generated clients
        if schema is None:
            schema = {"type": "object"}  # OpenAI: name is required, schema is not
        if not isinstance(schema, (dict, bool)):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON schema object",
                           "response_format.json_schema.schema")
        return "json_schema", json.dumps(schema)
    raise ApiError(400, f"response_format type {kind!r} is not supported (text, json_object, "
                        "json_schema)", "response_format.type")


def _literal(text: str) -> str:
    """A regex matching `text` exactly."""
    return re.sub(r"([\\.^$*+?{}\[\]|()/-])", r"\\\1", text)


def _from_structured_outputs(spec: Any) -> Tuple[str, str]:
    if not isinstance(spec, dict):
        raise ApiError(400, "structured_outputs must be an object", "structured_outputs")
    given = {k: v for k, v in spec.items() if v not in (None, False)}
    if len(given) != 1:
        raise ApiError(400, "structured_outputs needs exactly one of json, regex, grammar, "
                            f"choice, json_object; got {sorted(given)}", "structured_outputs")
    (key, value), = given.items()
    if key == "json":
        return "json_schema", value if isinstance(value, str) else json.dumps(value)
    if key == "json_object":
        return "json_schema", ANY_JSON_OBJECT
    if key == "regex" and isinstance(value, str):
        return "regex", value
    if key == "grammar" and isinstance(value, str):
        return "ebnf", value
    if key == "choice" and isinstance(value, list) and value and all(isinstance(c, str) for c in value):
        return "regex", "|".join(f"({_literal(c)})" for c in value)
    raise ApiError(400, f"structured_outputs.{key} is not supported or has the wrong type",
                   f"structured_outputs.{key}")
