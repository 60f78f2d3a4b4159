"""RolloutClient: the trainer's HTTP client for one rollserve server or several
data-parallel replicas.

    with RolloutClient.launch(model_path) as client:
        groups = client.generate(prompts, n=8, sampling_params={"max_new_tokens": 64})
        client.update_weights_from_tensors(model.named_parameters(), weight_version="step-1")

Each prompt is one /generate call with sampling_params.n, so a GRPO group runs on
one replica and shares its prompt's prefix. Calls run on a thread pool of
`max_concurrency` workers; connection errors, timeouts and 502/503/504 answers are
retried with exponential backoff (on another replica when there is one); any other
non-2xx answer raises RolloutError at once. AsyncRolloutClient has the same methods.
"""

from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any, Iterator, List, Optional, Sequence

import httpx

from rollserve.rollout import payloads as P
from rollserve.rollout.launch import launched_server
from rollserve.rollout.sample import Sample, group_from_response
from rollserve.rollout.settings import ClientSettings, json_or_text

DEFAULT_BUCKET_BYTES = 512 << 20


class RolloutClient:
    def __init__(self, urls, *, api_key: Optional[str] = None, balance: str = "round_robin",
                 max_concurrency: int = 64, timeout: float = 600.0, max_retries: int = 3,
                 backoff: float = 0.5, progress: bool = True):
        self.settings = ClientSettings(urls, api_key, balance, max_concurrency, timeout,
                                       max_retries, backoff, progress)
        self.urls = self.settings.urls
        self.balancer = self.settings.balancer
        self.http = httpx.Client(timeout=timeout, limits=self.settings.http_limits(),
                                 headers=self.settings.headers)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts=None, *, input_ids=None, n: int = 1,
                 sampling_params: Optional[dict] = None, return_logprob: bool = True,
                 logprob_start_len: int = -1, top_logprobs_num: int = 0,
                 image_data: Optional[list] = None) -> List[List[Sample]]:
        """One group of n Samples per prompt, in prompt order."""
        bodies, n = P.generate_payloads(prompts, input_ids, n, sampling_params, return_logprob,
                                        logprob_start_len, top_logprobs_num, image_data)

        def one_group(i: int) -> List[Sample]:
            return group_from_response(self._call("/generate", bodies[i], weight=n), i, n)

        return self._map(one_group, len(bodies), n, "generate")

    # ---- scoring -----------------------------------------------------------------------------------
    def classify(self, texts=None, *, conversations=None, input_ids=None) -> List[List[float]]:
        """Reward-model scores, one list of num_labels floats per item."""
        return self._pooled("/classify", P.classify_payloads(texts, conversations, input_ids),
                            "scores")

    def encode(self, texts=None, *, input_ids=None) -> List[List[float]]:
        """Embeddings, one per item."""
        return self._pooled("/encode", P.encode_payloads(texts, input_ids), "embedding")

    def _pooled(self, path: str, chunks: List[dict], field: str) -> list:
        """`field` of every item, in order; each chunk is one call, spread over replicas."""
        def one_chunk(i: int) -> list:
            return P.items_of(self._call(path, chunks[i], weight=P.chunk_size(chunks[i])))

        answers = self._map(one_chunk, len(chunks), 1, path)
        return [item[field] for items in answers for item in items]

    # ---- weights (every replica) -------------------------------------------------------------
    def update_weights_from_disk(self, model_path: str, *, weight_version: Optional[str] = None,
                                 load_format: Optional[str] = None, flush_cache: bool = True,
                                 abort_all_requests: bool = False,
                                 in_flight_requests: Optional[str] = None,
                                 in_flight_timeout: Optional[float] = None) -> dict:
        """in_flight_requests: what the update does to requests in flight: None / "wait"
        (they finish on the old weights first, up to in_flight_timeout seconds), "retract",
        "in_place", "restart" or "abort" (docs/server.md, weight updates)."""
        body = P.disk_update_payload(model_path, weight_version, load_format, flush_cache,
                                     abort_all_requests,
                                     P.in_flight_fields(in_flight_requests, in_flight_timeout))
        return self._on_every_replica("/update_weights_from_disk", body)

    def update_weights_from_tensors(self, named_tensors, *, weight_version: Optional[str] = None,
                                    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
                                    in_flight_requests: Optional[str] = None,
                                    in_flight_timeout: Optional[float] = None) -> dict:
        """(name, tensor) pairs (e.g. model.named_parameters()), sent in buckets of about
        bucket_bytes; the last bucket flushes the cache and sets weight_version.

        With several buckets, generation is paused on every replica from the first bucket
        to the last (and continued afterwards, also when a bucket is refused), so no step
        runs on a mix of old and new weights; the pause's mode follows in_flight_requests
        (as update_weights_from_disk; None: running requests finish first)."""
        named = list(named_tensors)
        if not all(t.is_cuda for _, t in named):  # host bytes travel in the body: keep under its limit
            bucket_bytes = min(bucket_bytes, P.max_bucket_bytes(self._body_limit()))
        in_flight = P.in_flight_fields(in_flight_requests, in_flight_timeout)
        hold = len(P.tensor_buckets(named, bucket_bytes)) > 1
        if hold:
            self.pause_generation(P.PUSH_PAUSE_MODES[in_flight_requests])
        answer, buckets = {}, 0
        try:
            for body in P.tensor_update_payloads(named, weight_version, bucket_bytes, in_flight):
                answer = self._on_every_replica("/update_weights_from_tensor", body)
                buckets += 1
        finally:
            if hold:
                self.continue_generation()
        return {**answer, "num_buckets": buckets}  # the last bucket's answer

    def pause_generation(self, mode: str = "abort") -> dict:
        """Every replica stops running forward steps until continue_generation. mode, as
        SGLang's: "abort" (running and queued requests end), "retract" (requeued, KV
        recomputed at continue), "in_place" (kept with their KV); also "wait" (they finish
        first, new ones wait)."""
        return self._on_every_replica("/pause_generation", {"mode": mode})

    def continue_generation(self) -> dict:
        return self._on_every_replica("/continue_generation", None)

    # ---- server state -----------------------------------------------------------------------------
    def get_model_info(self) -> dict:
        """The first replica's /get_model_info."""
        return self._call("/get_model_info", None, url=self.urls[0], method="GET")

    def get_server_info(self) -> dict:
        return self._call("/get_server_info", None, url=self.urls[0], method="GET")

    def _body_limit(self) -> Optional[int]:
        """The smallest request body limit of the replicas (None if not reported)."""
        limits = [self._call("/get_server_info", None, url=u, method="GET").get(
            "max_request_body_bytes") for u in self.urls]
        return min((x for x in limits if x), default=None)

    def flush_cache(self) -> dict:
        return self._on_every_replica("/flush_cache", None)

    def health(self) -> bool:
        """Whether every replica answers /health with 200 (no retries)."""
        for url in self.urls:
            try:
                if self.http.get(url + "/health", timeout=min(self.settings.timeout, 10.0)).status_code != 200:
                    return False
            except httpx.HTTPError:
                return False
        return True

    # ---- lifetime ---------------------------------------------------------------------------------
    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.http.close()

    def __enter__(self) -> "RolloutClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    @contextlib.contextmanager
    def launch(cls, model_path: Optional[str] = None, *, server_args: Sequence[str] = (),
               log_file=None, startup_timeout: float = 600.0,
               **client_kwargs) -> Iterator["RolloutClient"]:
        """Starts `rollserve serve` on a free port, yields a client for it, and stops
        the server and its engine processes on exit. `log_file`: an open file for the
        server's output (default: this process's stdout)."""
        with launched_server(model_path, server_args, log_file, startup_timeout,
                             client_kwargs.get("api_key")) as url:
            with cls(url, **client_kwargs) as client:
                yield client

    # ---- the transport --------------------------------------------------------------------------
    def _call(self, path: str, body: Optional[dict], weight: int = 1, url: Optional[str] = None,
              method: str = "POST") -> Any:
        """One call with retries; `url` pins the replica, else the balancer picks."""
        tried: List[str] = []
        last: Any = None
        for attempt in range(self.settings.max_retries + 1):
            target = url or self.balancer.acquire(weight, avoid=tried)
            try:
                response = self.http.request(method, target + path, json=body)
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
            time.sleep(self.settings.retry_wait(target, attempt, tried, pinned=url is not None))
        raise self.settings.failure(path, self.settings.max_retries + 1, last)

    def _on_every_replica(self, path: str, body: Optional[dict]) -> dict:
        answers = self._map(lambda i: self._call(path, body, url=self.urls[i]), len(self.urls), 0,
                            path)
        return P.merge_replica_answers(dict(zip(self.urls, answers)))

    def _map(self, fn, count: int, samples_each: int, what: str) -> list:
        """fn(0..count-1) on the pool, results in order; the first failure cancels
        the calls not yet started and is raised."""
        if count == 1:
            return [fn(0)]
        futures = [self._executor().submit(fn, i) for i in range(count)]
        with self.settings.progress_bar(count * samples_each, what) as bar:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                bar.update(len(done) * samples_each)
                for future in done:
                    if future.exception() is not None:
                        for other in pending:
                            other.cancel()
                        raise future.exception()
        return [f.result() for f in futures]

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.settings.max_concurrency,
                                                thread_name_prefix="rollout")
            return self._pool
