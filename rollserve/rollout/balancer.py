"""Which replica gets the next call: round robin, or the replica with the fewest
samples in flight (shortest queue). A replica that refused a connection is skipped
for a while. Thread-safe; no awaits inside, so the asyncio client shares it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Dict, List, Sequence

BALANCE_MODES = ("round_robin", "shortest_queue")


class Balancer:
    def __init__(self, urls: Sequence[str], mode: str = "round_robin"):
        if mode not in BALANCE_MODES:
            raise ValueError(f"balance: must be one of {', '.join(BALANCE_MODES)}, got {mode!r}")
        if not urls:
            raise ValueError("urls: give at least one server URL")
        self.urls: List[str] = list(urls)
        self.mode = mode
        self.in_flight: Dict[str, int] = {u: 0 for u in self.urls}  # samples, not calls
        self.sent: Counter = Counter()  # calls sent to each replica, for stats
        self._down_until: Dict[str, float] = {u: 0.0 for u in self.urls}
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self, weight: int = 1, avoid: Sequence[str] = ()) -> str:
        """Picks a replica for a call of `weight` samples and counts it in flight;
        release() it when the call ends. Replicas in `avoid` (already failed for
        this call) or marked down are taken only when nothing else is left."""
        with self._lock:
            url = self._pick(self._candidates(avoid))
            self.in_flight[url] += weight
            self.sent[url] += 1
            return url

    def release(self, url: str, weight: int = 1) -> None:
        with self._lock:
            self.in_flight[url] -= weight

    def mark_down(self, url: str, seconds: float) -> None:
        with self._lock:
            self._down_until[url] = time.monotonic() + seconds

    def mark_up(self, url: str) -> None:
        with self._lock:
            self._down_until[url] = 0.0

    def has_alternative(self, avoid: Sequence[str]) -> bool:
        """Whether a replica outside `avoid` is up (then a retry need not wait)."""
        with self._lock:
            now = time.monotonic()
            return any(u not in avoid and self._down_until[u] <= now for u in self.urls)

    def _candidates(self, avoid: Sequence[str]) -> List[str]:
        now = time.monotonic()
        fresh = [u for u in self.urls if u not in avoid]
        up = [u for u in fresh if self._down_until[u] <= now]
        return up or fresh or self.urls

    def _pick(self, candidates: List[str]) -> str:
        # Walk from the round-robin cursor, so that ties under shortest_queue spread too.
        order = self.urls[self._next:] + self.urls[:self._next]
        ranked = [u for u in order if u in candidates]
        if self.mode == "shortest_queue":
            url = min(ranked, key=lambda u: self.in_flight[u])
        else:
            url = ranked[0]
        self._next = (self.urls.index(url) + 1) % len(self.urls)
        return url
