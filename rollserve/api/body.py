"""Request bodies: JSON parsed into a pydantic model, errors answered as 4xx naming the field."""

from __future__ import annotations

import json
from typing import Type, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from rollserve.api.protocol import ApiError

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: Type[M]) -> M:
    """JSON whatever the Content-Type says (curl -d sends a form type), then the
    pydantic model; a wrong type answers 422 naming the field."""
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON", "body")
    try:
        return model.model_validate(data)
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
