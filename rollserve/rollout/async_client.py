"""AsyncRolloutClient: RolloutClient's methods as coroutines, on httpx.AsyncClient.
An asyncio.Semaphore keeps at most `max_concurrency` calls in flight (over all
the client's concurrent method calls); retries and balancing are the same."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, List, Optional, Sequence

import httpx

from rollserve.rollout import payloads as P
from rollserve.rollout.client import DEFAULT_BUCKET_BYTES
from rollserve.rollout.launch import launched_server
from rollserve.rollout.sample import Sample, group_from_response
from rollserve.rollout.settings import ClientSettings, json_or_text


class AsyncRolloutClient:
    def __init__(self, urls, *, api_key: Optional[str] = None, balance: str = "round_robin",
                 max_concurrency: int = 64, timeout: float = 600.0, max_retries: int = 3,
                 backoff: float = 0.5, progress: bool = True):
        self.settings = ClientSettings(urls, api_key, balance, max_concurrency, timeout,
                                       max_retries, backoff, progress)
        self.urls = self.settings.urls
        self.balancer = self.settings.balancer
        self.http = httpx.AsyncClient(timeout=timeout, limits=self.settings.http_limits(),
                                      headers=self.settings.headers)
        self._semaphore = asyncio.Semaphore(max_concurrency)

    # ---- generation ------------------------------------------------------------------------------
    async def generate(self, prompts=None, *, input_ids=None, n: int = 1,
                       sampling_params: Optional[dict] = None, return_logprob: bool = True,
                       logprob_start_len: int = -1, top_logprobs_num: int = 0,
                       image_data: Optional[list] = None) -> List[List[Sample]]:
        bodies, n = P.generate_payloads(prompts, input_ids, n, sampling_params, return_logprob,
                                        logprob_start_len, top_logprobs_num, image_data)

        async def one_group(i: int) -> List[Sample]:
            return group_from_response(await self._call("/generate", bodies[i], weight=n), i, n)

        return await self._map(one_group, len(bodies), n, "generate")

    # ---- scoring -----------------------------------------------------------------------------------
    async def classify(self, texts=None, *, conversations=None, input_ids=None) -> List[List[float]]:
        return await self._pooled("/classify",
                                  P.classify_payloads(texts, conversations, input_ids), "scores")

    async def encode(self, texts=None, *, input_ids=None) -> List[List[float]]:
        return await self._pooled("/encode", P.encode_payloads(texts, input_ids), "embedding")

    async def _pooled(self, path: str, chunks: List[dict], field: str) -> list:
        async def one_chunk(i: int) -> list:
            return P.items_of(await self._call(path, chunks[i], weight=P.chunk_size(chunks[i])))

        answers = await self._map(one_chunk, len(chunks), 1, path)
        return [item[field] for items in answers for item in items]

    # ---- weights (every replica) -------------------------------------------------------------
    async def update_weights_from_disk(self, model_path: str, *, weight_version: Optional[str] = None,
                                       load_format: Optional[str] = None, flush_cache: bool = True,
                                       abort_all_requests: bool = False,
                                       in_flight_requests: Optional[str] = None,
                                       in_flight_timeout: Optional[float] = None) -> dict:
        body = P.disk_update_payload(model_path, weight_version, load_format, flush_cache,
                                     abort_all_requests,
                                     P.in_flight_fields(in_flight_requests, in_flight_timeout))
        return await self._on_every_replica("/update_weights_from_disk", body)

    async def update_weights_from_tensors(self, named_tensors, *,
                                          weight_version: Optional[str] = None,
                                          bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                                          in_flight_requests: Optional[str] = None,
                                          in_flight_timeout: Optional[float] = None) -> dict:
        """As RolloutClient.update_weights_from_tensors (generation paused across buckets)."""
        named = list(named_tensors)
        if not all(t.is_cuda for _, t in named):
            bucket_bytes = min(bucket_bytes, P.max_bucket_bytes(await self._body_limit()))
        in_flight = P.in_flight_fields(in_flight_requests, in_flight_timeout)
        hold = len(P.tensor_buckets(named, bucket_bytes)) > 1
        if hold:
            await self.pause_generation(P.PUSH_PAUSE_MODES[in_flight_requests])
        answer, buckets = {}, 0
        try:
            for body in P.tensor_update_payloads(named, weight_version, bucket_bytes, in_flight):
                answer = await self._on_every_replica("/update_weights_from_tensor", body)
                buckets += 1
        finally:
            if hold:
                await self.continue_generation()
        return {**answer, "num_buckets": buckets}  # the last bucket's answer

    async def pause_generation(self, mode: str = "abort") -> dict:
        """As RolloutClient.pause_generation."""
        return await self._on_every_replica("/pause_generation", {"mode": mode})

    async def continue_generation(self) -> dict:
        return await self._on_every_replica("/continue_generation", None)

    # ---- server state -----------------------------------------------------------------------------
    async def get_model_info(self) -> dict:
        return await self._call("/get_model_info", None, url=self.urls[0], method="GET")

    async def get_server_info(self) -> dict:
        return await self._call("/get_server_info", None, url=self.urls[0], method="GET")

    async def _body_limit(self) -> Optional[int]:
        infos = await asyncio.gather(*(self._call("/get_server_info", None, url=u, method="GET")
                                       for u in self.urls))
        return min((i.get("max_request_body_bytes") for i in infos
                    if i.get("max_request_body_bytes")), default=None)

    async def flush_cache(self) -> dict:
        return await self._on_every_replica("/flush_cache", None)

    async def health(self) -> bool:
        async def one(url: str) -> bool:
            try:
                response = await self.http.get(url + "/health",
                                               timeout=min(self.settings.timeout, 10.0))
                return response.status_code == 200
            except httpx.HTTPError:
                return False

        return all(await asyncio.gather(*(one(u) for u in self.urls)))

    # ---- lifetime ---------------------------------------------------------------------------------
    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncRolloutClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @classmethod
    @contextlib.asynccontextmanager
    async def launch(cls, model_path: Optional[str] = None, *, server_args: Sequence[str] = (),
                     log_file=None, startup_timeout: float = 600.0,
                     **client_kwargs) -> AsyncIterator["AsyncRolloutClient"]:
        """As RolloutClient.launch, for `async with`."""
        server = launched_server(model_path, server_args, log_file, startup_timeout,
                                 client_kwargs.get("api_key"))
        url = await asyncio.to_thread(server.__enter__)
        try:
            async with cls(url, **client_kwargs) as client:
                yield client
        finally:
            await asyncio.to_thread(server.__exit__, None, None, None)

    # ---- the transport --------------------------------------------------------------------------
    async def _call(self, path: str, body: Optional[dict], weight: int = 1,
                    url: Optional[str] = None, method: str = "POST") -> Any:
        async with self._semaphore:
            return await self._call_with_retries(path, body, weight, url, method)

    async def _call_with_retries(self, path, body, weight, url, method) -> Any:
        tried: List[str] = []
        last: Any = None
        for attempt in range(self.settings.max_retries + 1):
            target = url or self.balancer.acquire(weight, avoid=tried)
            try:
                response = await self.http.request(method, target + path, json=body)
            except httpx.TransportError as e:
                last = e
            else:
                if response.status_code not in P.RETRY_STATUSES:
                    self.balancer.mark_up(target)
                    return P.check_answer(response.status_code, json_or_text(response))
                last = response
            finally:
                if url is None:
                    self.balancer.release(target, weight)
            await asyncio.sleep(self.settings.retry_wait(target, attempt, tried,
                                                         pinned=url is not None))
        raise self.settings.failure(path, self.settings.max_retries + 1, last)

    async def _on_every_replica(self, path: str, body: Optional[dict]) -> dict:
        answers = await self._map(lambda i: self._call(path, body, url=self.urls[i]),
                                  len(self.urls), 0, path)
        return P.merge_replica_answers(dict(zip(self.urls, answers)))

    async def _map(self, fn, count: int, samples_each: int, what: str) -> list:
        """await fn(0..count-1) concurrently, results in order; the first failure
        cancels the rest and is raised."""
        if count == 1:
            return [await fn(0)]
        tasks = [asyncio.ensure_future(fn(i)) for i in range(count)]
        try:
            with self.settings.progress_bar(count * samples_each, what) as bar:
                for next_done in asyncio.as_completed(tasks):
                    await next_done
                    bar.update(samples_each)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [task.result() for task in tasks]
