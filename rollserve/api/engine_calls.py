"""One non-streamed generate through the tokenizer manager, for routes that build their
own requests (/v1/score, TRL's routes): every result, in index order."""

from __future__ import annotations

from typing import List

from rollserve.frontend.request_input import GenerateReqInput


async def generate_all(tm, obj: GenerateReqInput) -> List[dict]:
    results = tm.generate(obj)
    try:
        out = await results.__anext__()
    finally:
        await results.aclose()
    return sorted(out if isinstance(out, list) else [out], key=lambda r: r.get("index", 0))
