"""What both rollout clients share: their checked arguments, the balancer, the
retry policy and the progress bar."""

from __future__ import annotations

from typing import Any, List, Optional

import httpx

from rollserve.rollout import payloads as P
from rollserve.rollout.balancer import Balancer
from rollserve.rollout.errors import RolloutError

PROGRESS_MIN_SAMPLES = 64  # smaller calls show no progress bar


def json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


class ClientSettings:
    """Arguments shared by both clients, checked once."""

    def __init__(self, urls, api_key: Optional[str], balance: str, max_concurrency: int,
                 timeout: float, max_retries: int, backoff: float, progress: bool):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency: must be >= 1, got {max_concurrency}")
        if max_retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("max_retries and backoff must be >= 0 and timeout > 0")
        self.urls = P.normalize_urls(urls)
        self.balancer = Balancer(self.urls, balance)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.progress = progress

    def http_limits(self) -> httpx.Limits:
        """One connection per call in flight, plus one per replica for control calls."""
        return httpx.Limits(max_connections=self.max_concurrency + len(self.urls),
                            max_keepalive_connections=self.max_concurrency)

    def progress_bar(self, total: int, what: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=what, unit="sample", dynamic_ncols=True,
                    disable=not self.progress or total < PROGRESS_MIN_SAMPLES)

    def failure(self, path: str, attempts: int, last: Any) -> RolloutError:
        if isinstance(last, httpx.Response):
            body = json_or_text(last)
            return RolloutError(f"{path}: HTTP {last.status_code} after {attempts} attempts: "
                                f"{P.error_message(body)}", last.status_code, body)
        kind = "timed out" if isinstance(last, httpx.TimeoutException) else "connection failed"
        return RolloutError(f"{path}: {kind} after {attempts} attempts: "
                            f"{type(last).__name__}: {last}")


    def retry_wait(self, target: str, attempt: int, tried: List[str], pinned: bool) -> float:
        """Records a failed attempt on `target`; returns the seconds to wait before the
        next one: none when another replica can take it now, else exponential backoff."""
        tried.append(target)
        delay = P.backoff_delay(self.backoff, attempt)
        self.balancer.mark_down(target, delay)
        if attempt >= self.max_retries or (not pinned and self.balancer.has_alternative(tried)):
            return 0.0
        return delay
