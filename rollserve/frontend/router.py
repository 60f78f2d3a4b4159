"""Data parallelism: one endpoint in front of several rollserve servers (workers).

A request goes to one worker, chosen by the policy (router_policy.py); if that worker
cannot be reached (it died, its port closed) before it answered, the request is sent to
another one, so a dead worker loses no request that had not started streaming. Control
calls that change a replica's state (weight updates, flush_cache, pause, memory release)
go to every worker at once and come back as one answer: success only when every worker
succeeded, with the failing workers named. A disk update is checked by every worker first
(`validate_only`) and applied only when all accepted it, so a checkpoint path one worker
cannot read leaves every worker on the old weights. A health check marks workers down and up.

The HTTP side is api/router_app.py; `rollserve serve --dp-size N` (api/dp_launch.py)
starts N workers and this router, `rollserve router --worker-urls ...` only the router.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import AsyncIterator, Dict, List, Optional, Tuple

import httpx

from rollserve.frontend.router_policy import RoutingPolicy, make_policy

logger = logging.getLogger(__name__)
logging.getLogger("httpx").setLevel(logging.WARNING)  # not one line per forwarded request

HEALTH_INTERVAL_S = 5.0
HEALTH_TIMEOUT_S = 5.0


class NoWorkerError(RuntimeError):
    """No healthy worker is left to take the request."""


@dataclass
class Worker:
    url: str
    healthy: bool = True
    in_flight: int = 0  # requests this router has sent there and not yet seen finish
    served: int = 0  # requests it answered (for /list_workers and the load tests)

    def status(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "served": self.served}


class Router:
    def __init__(self, worker_urls: List[str], policy: str = "cache_aware",
                 api_key: Optional[str] = None, request_timeout_s: Optional[float] = None,
                 **policy_kwargs):
        self.workers: Dict[str, Worker] = {}
        for url in worker_urls:
            self.workers[_normal(url)] = Worker(_normal(url))
        self.policy_name = policy
        self.policy: RoutingPolicy = make_policy(policy, **policy_kwargs)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(request_timeout_s))
        self._health_task: Optional[asyncio.Task] = None

    # ---- the worker set ------------------------------------------------------------------
    async def add_worker(self, url: str) -> dict:
        url = _normal(url)
        if url in self.workers:
            return {"success": False, "message": f"worker {url} is already listed"}
        if not await self._is_healthy(url):
            return {"success": False, "message": f"worker {url} does not answer /health"}
        self.workers[url] = Worker(url)
        logger.info("added worker %s", url)
        return {"success": True, "message": f"added worker {url}"}

    def remove_worker(self, url: str) -> dict:
        url = _normal(url)
        if self.workers.pop(url, None) is None:
            return {"success": False, "message": f"no worker {url}"}
        self.policy.forget(url)
        logger.info("removed worker %s", url)
        return {"success": True, "message": f"removed worker {url}"}

    def list_workers(self) -> dict:
        out = {"urls": list(self.workers), "workers": [w.status() for w in self.workers.values()],
               "policy": self.policy_name}
        stats = getattr(self.policy, "stats", None)
        if stats is not None:
            out["cache_aware"] = stats()
        return out

    def healthy(self) -> List[str]:
        return [url for url, w in self.workers.items() if w.healthy]

    def _pick(self, text: str, exclude: set) -> Worker:
        candidates = [u for u in self.healthy() if u not in exclude]
        if not candidates:
            raise NoWorkerError("no healthy worker is left to take the request")
        load = {u: self.workers[u].in_flight for u in candidates}
        return self.workers[self.policy.pick(candidates, load, text)]

    def _mark_down(self, worker: Worker, error: Exception) -> None:
        if worker.healthy:
            logger.warning("worker %s is unreachable (%s: %s); its requests go elsewhere",
                           worker.url, type(error).__name__, error)
        worker.healthy = False
        self.policy.forget(worker.url)

    # ---- one request to one worker ---------------------------------------------------------
    async def forward(self, method: str, path: str, content: bytes, text: str,
                      headers: Optional[dict] = None) -> httpx.Response:
        """The first answer a reachable worker gives; failover on connection errors."""
        tried: set = set()
        while True:
            worker = self._pick(text, tried)
            tried.add(worker.url)
            worker.in_flight += 1
            try:
                response = await self.client.request(method, worker.url + path, content=content,
                                                     headers=headers)
                worker.served += 1
                return response
            except httpx.TransportError as e:
                self._mark_down(worker, e)
            finally:
                worker.in_flight -= 1

    async def stream(self, method: str, path: str, content: bytes, text: str,
                     headers: Optional[dict] = None) -> Tuple[int, dict, AsyncIterator[bytes]]:
        """(status, headers, body chunks) of a streamed answer; failover until the worker
        has answered (after that its chunks are the client's and cannot be replayed)."""
        tried: set = set()
        while True:
            worker = self._pick(text, tried)
            tried.add(worker.url)
            worker.in_flight += 1
            request = self.client.build_request(method, worker.url + path, content=content,
                                                headers=headers)
            try:
                response = await self.client.send(request, stream=True)
            except httpx.TransportError as e:
                worker.in_flight -= 1
                self._mark_down(worker, e)
                continue
            return response.status_code, dict(response.headers), self._chunks(worker, response)

    async def _chunks(self, worker: Worker, response: httpx.Response) -> AsyncIterator[bytes]:
        try:
            async for chunk in response.aiter_raw():
                yield chunk
            worker.served += 1
        except httpx.TransportError as e:
            self._mark_down(worker, e)
        finally:
            worker.in_flight -= 1
            await response.aclose()

    # ---- one call to every worker ----------------------------------------------------------
    async def fan_out(self, method: str, path: str, content: bytes,
                      headers: Optional[dict] = None) -> Tuple[int, dict]:
        """Sends the call to every worker; (status, combined answer)."""
        urls = list(self.workers)
        if not urls:
            return 503, {"success": False, "message": "the router has no workers"}

        async def one(url: str):
            try:
                r = await self.client.request(method, url + path, content=content, headers=headers)
                try:
                    body = r.json()
                except ValueError:
                    body = {"message": r.text}
                return r.status_code, body
            except httpx.TransportError as e:
                self._mark_down(self.workers[url], e) if url in self.workers else None
                return 503, {"success": False, "message": f"unreachable: {type(e).__name__}: {e}"}

        answers = dict(zip(urls, await asyncio.gather(*(one(u) for u in urls))))
        return combine(answers)

    async def update_all(self, method: str, path: str, content: bytes,
                         headers: Optional[dict] = None) -> Tuple[int, dict]:
        """A disk update on every worker, all or none: each worker checks the checkpoint
        against its model first (validate_only: nothing written); any refusal is the answer
        and no worker changed. Then every worker applies it. (A failure after every worker
        validated is an I/O or device fault while writing: the answer names that worker and
        says the others applied the update.)"""
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict) or body.get("validate_only"):
            return await self.fan_out(method, path, content, headers)
        check = json.dumps({**body, "validate_only": True}).encode()
        status, checked = await self.fan_out(method, path, check, headers)
        if not checked.get("success"):
            checked["message"] = f"no worker was updated: {checked.get('message', '')}"
            return status, checked
        status, answer = await self.fan_out(method, path, content, headers)
        if not answer.get("success") and "succeeded:" in answer.get("message", ""):
            answer["message"] += ("; every worker had validated it, so this failed while "
                                  "writing: the workers that succeeded serve the new weights")
        return status, answer

    # ---- health ------------------------------------------------------------------------------
    async def _is_healthy(self, url: str) -> bool:
        try:
            r = await self.client.get(url + "/health", timeout=HEALTH_TIMEOUT_S)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    async def check_health(self) -> None:
        for url, worker in list(self.workers.items()):
            ok = await self._is_healthy(url)
            if ok != worker.healthy:
                logger.info("worker %s is %s", url, "back" if ok else "down")
                if not ok:
                    self.policy.forget(url)
            worker.healthy = ok

    def start_health_checks(self, interval_s: float = HEALTH_INTERVAL_S) -> None:
        async def loop():
            while True:
                await asyncio.sleep(interval_s)
                await self.check_health()

        self._health_task = asyncio.get_running_loop().create_task(loop())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
        await self.client.aclose()


def combine(answers: Dict[str, Tuple[int, dict]]) -> Tuple[int, dict]:
    """One answer for a call every worker ran: the first worker's when all succeeded, else a
    failure naming each failing worker and its message (with the others' outcome)."""
    failed = {url: (status, body) for url, (status, body) in answers.items()
              if status >= 400 or (isinstance(body, dict) and body.get("success") is False)}
    first_status, first = next(iter(answers.values()))
    combined = dict(first) if isinstance(first, dict) else {"result": first}
    combined["workers"] = {url: body for url, (_, body) in answers.items()}
    if not failed:
        combined["success"] = True
        return first_status, combined
    names = "; ".join(f"{url}: {body.get('message', body) if isinstance(body, dict) else body}"
                      for url, (_, body) in failed.items())
    ok = [url for url in answers if url not in failed]
    combined["success"] = False
    combined["message"] = (f"{len(failed)} of {len(answers)} workers failed: {names}"
                           + (f" (succeeded: {', '.join(ok)})" if ok else ""))
    status = max(s for s, _ in failed.values())
    return (status if status >= 400 else 400), combined


def _normal(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"
