"""/flush_cache as SGLang answers it: plain text, 200 once the prefix cache is empty, 400
(with the reason) while requests still run or wait. `?timeout=S` waits up to S seconds
for the engine to go idle first."""

from __future__ import annotations

import asyncio
import time
from typing import Optional

from starlette.responses import PlainTextResponse

from rollserve.api.protocol import ApiError

FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are running "
           "or waiting requests, the operation will not be performed.)\n")
RETRY_S = 0.05


async def flush_cache_response(tm, timeout: Optional[str]) -> PlainTextResponse:
    try:
        wait = float(timeout) if timeout not in (None, "") else 0.0
    except ValueError:
        wait = -1.0
    if not wait >= 0:  # also NaN
        raise ApiError(400, f"timeout must be a number of seconds >= 0, got {timeout!r}", "timeout")
    deadline = time.monotonic() + wait
    while True:
        result = await tm.flush_cache()
        if result.get("success"):
            return PlainTextResponse(FLUSHED)
        if time.monotonic() >= deadline:
            return PlainTextResponse(f"{result.get('message') or 'Flush cache failed.'}\n",
                                     status_code=400)
        await asyncio.sleep(RETRY_S)
