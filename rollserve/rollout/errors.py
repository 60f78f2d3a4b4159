"""The one error the rollout clients raise for a failed call."""

from __future__ import annotations

from typing import Any, Optional


class RolloutError(RuntimeError):
    """A call that failed: a non-2xx answer (`status`, `body` as the server sent it),
    or no answer after the retries (`status` None, e.g. connection refused, timeout)."""

    def __init__(self, message: str, status: Optional[int] = None, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body


def error_message(body: Any) -> str:
    """The message of an error body: SGLang's flat {"message"} or OpenAI's {"error": {...}}."""
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str):
            return body["error"]["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return str(body)[:500]
