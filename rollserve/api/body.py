"""Request bodies: JSON parsed into a pydantic model, errors answered as 4xx naming the field.

Types are strict: a boolean field takes only true/false (not "yes" or 1), an integer field
only an integer (not true or "5"); a float field also takes an integer. Bodies nested
deeper than MAX_JSON_DEPTH and strings that are not valid Unicode (a lone surrogate
escape such as "\\ud800") are refused with a 400 before any model sees them.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Type, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from rollserve.api.protocol import ApiError

M = TypeVar("M", bound=BaseModel)
PARSED_BODY = "json_body"  # where request_guard.py leaves the body it parsed (request.state)
MAX_JSON_DEPTH = 32  # the deepest real body (chat messages with content parts) is about 5


async def parse_body(request: Request, model: Type[M]) -> M:
    """The JSON body (request_guard.py has checked its Content-Type), then the pydantic
    model in strict mode; a wrong type answers 422 naming the field."""
    parsed = getattr(request.state, PARSED_BODY, _MISSING)
    data = parsed if parsed is not _MISSING else load_json(await request.body())
    return validate_body(data, model)


_MISSING = object()


def load_json(raw: bytes) -> Any:
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, f"the request body is nested deeper than {MAX_JSON_DEPTH} levels", "body")
    except ValueError:  # also undecodable bytes (UnicodeDecodeError)
        raise ApiError(400, "the request body is not valid JSON", "body")
    problem = check_json_value(data)
    if problem is not None:
        raise ApiError(400, problem[1], problem[0])
    return data


def check_json_value(data: Any) -> Optional[tuple]:
    """(field, message) for a body too deep or holding a string that is not valid Unicode;
    iterative, so that depth itself cannot exhaust the stack."""
    stack = [(data, 1, None)]
    while stack:
        value, depth, field = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return field or "body", f"{field or 'body'}: the string holds a lone surrogate " \
                                        "(not valid Unicode)"
            continue
        if not isinstance(value, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            return "body", f"the request body is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    return "body", "a key holds a lone surrogate (not valid Unicode)"
                stack.append((item, depth + 1, field or key))
        else:
            stack.extend((item, depth + 1, field) for item in value)
    return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def validate_body(data: Any, model: Type[M]) -> M:
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as e:
        parts, param = [], None
        for err in e.errors():
            loc = [str(p) for p in err.get("loc", ())] or ["body"]
            param = param or loc[0]
            parts.append(f"{'.'.join(loc)}: {err.get('msg')}")
        raise ApiError(422, "; ".join(parts), param)


async def optional_body(request: Request, model: Type[M]) -> M:
    """parse_body for models whose fields all have defaults: the body may be left out."""
    return model() if not (await request.body()).strip() else await parse_body(request, model)
