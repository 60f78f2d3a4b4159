"""`rollserve.Engine`: the engine in-process, without HTTP, shaped like sglang.Engine.

The scheduler and detokenizer still run in their own processes; this object
holds the tokenizer manager on an event loop of its own (a daemon thread), so
both plain and asyncio callers can use it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, AsyncIterator, Dict, Iterator, List, Optional, Union

from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.server_info import server_info
from rollserve.frontend.startup import resolve_server_args
from rollserve.frontend.encode_input import EncodeReqInput
from rollserve.frontend.request_input import GenerateReqInput
from rollserve.frontend.tokenizer_manager import TokenizerManager
from rollserve.version import __version__
from rollserve.weight_sync.engine_api import WeightSyncMixin

_DONE = object()


class Engine(WeightSyncMixin):  # update_weights_* & co. come from weight_sync/engine_api.py
    def __init__(self, model_path: Optional[str] = None, **server_args):
        self.server_args = resolve_server_args(ServerArgs.from_kwargs(model_path=model_path,
                                                                      **server_args))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="rollserve-engine-loop",
                                        daemon=True)
        self._thread.start()
        self.tokenizer_manager = TokenizerManager(self.server_args)
        self._closed = False
        # open its sockets in the loop now: the scheduler's heartbeats are read from the start
        self._call(self._start())
        self.tokenizer = self.tokenizer_manager.tokenizer

    # ---- generation -------------------------------------------------------------------
    def generate(self, prompt: Union[None, str, List[str]] = None,
                 sampling_params: Union[None, Dict, List[Dict]] = None,
                 input_ids: Union[None, List[int], List[List[int]]] = None,
                 return_logprob: Union[bool, List[bool]] = False,
                 logprob_start_len: Union[int, List[int]] = -1,
                 top_logprobs_num: Union[int, List[int]] = 0,
                 return_text_in_logprobs: bool = False,
                 rid: Union[None, str, List[str]] = None,
                 stream: bool = False, image_data=None):
        """One result dict, a list for a batch (or n > 1), or with stream=True an
        iterator of cumulative result dicts. image_data: as /generate's (VLMs)."""
        obj = GenerateReqInput(text=prompt, input_ids=input_ids, sampling_params=sampling_params,
                               rid=rid, return_logprob=return_logprob,
                               logprob_start_len=logprob_start_len,
                               top_logprobs_num=top_logprobs_num,
                               return_text_in_logprobs=return_text_in_logprobs, stream=stream,
                               image_data=image_data)
        if stream:
            return self._stream_sync(obj)
        return self._call(self._first(obj))

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None,
                             return_logprob=False, logprob_start_len=-1, top_logprobs_num=0,
                             return_text_in_logprobs=False, rid=None, stream=False, image_data=None):
        obj = GenerateReqInput(text=prompt, input_ids=input_ids, sampling_params=sampling_params,
                               rid=rid, return_logprob=return_logprob,
                               logprob_start_len=logprob_start_len,
                               top_logprobs_num=top_logprobs_num,
                               return_text_in_logprobs=return_text_in_logprobs, stream=stream,
                               image_data=image_data)
        if stream:
            return self._stream_async(obj)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._first(obj), self.loop))

    async def _first(self, obj: GenerateReqInput):
        async for result in self.tokenizer_manager.generate(obj):
            return result

    def _stream_sync(self, obj: GenerateReqInput) -> Iterator[Dict[str, Any]]:
        chunks: "queue.Queue" = queue.Queue()
        future = asyncio.run_coroutine_threadsafe(self._pump(obj, chunks.put), self.loop)
        try:
            while True:
                item = chunks.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    async def _stream_async(self, obj: GenerateReqInput) -> AsyncIterator[Dict[str, Any]]:
        chunks: asyncio.Queue = asyncio.Queue()
        caller = asyncio.get_running_loop()
        put = lambda item: caller.call_soon_threadsafe(chunks.put_nowait, item)  # noqa: E731
        future = asyncio.run_coroutine_threadsafe(self._pump(obj, put), self.loop)
        try:
            while True:
                item = await chunks.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            future.cancel()

    async def _pump(self, obj: GenerateReqInput, put) -> None:
        try:
            async for chunk in self.tokenizer_manager.generate(obj):
                put(chunk)
        except BaseException as e:  # hand errors (and cancellation) to the consumer
            put(e if isinstance(e, Exception) else RuntimeError("stream cancelled"))
            if not isinstance(e, Exception):
                raise
            return
        put(_DONE)

    # ---- embeddings and rewards (embedding / classification models) ------------------------------
    def encode(self, prompt: Union[None, str, List[str]] = None,
               input_ids: Union[None, List[int], List[List[int]]] = None,
               rid: Union[None, str, List[str]] = None):
        """{"embedding": [...], "meta_info": {...}}, or a list of them for a batch."""
        obj = EncodeReqInput(text=prompt, input_ids=input_ids, rid=rid)
        return self._call(self.tokenizer_manager.encode(obj))

    def classify(self, prompt: Union[None, str, List[str]] = None,
                 input_ids: Union[None, List[int], List[List[int]]] = None,
                 messages: Union[None, List[dict], List[List[dict]]] = None,
                 rid: Union[None, str, List[str]] = None):
        """{"embedding": scores, "scores": scores, "meta_info": {...}} per input (a list for a
        batch); `messages` are conversations rendered with the model's chat template."""
        obj = EncodeReqInput(text=prompt, input_ids=input_ids, messages=messages, rid=rid)
        return self._call(self.tokenizer_manager.classify(obj))

    # ---- control ---------------------------------------------------------------------------
    def flush_cache(self) -> dict:
        return self._call(self.tokenizer_manager.flush_cache())

    def start_profile(self, **fields) -> dict:
        """torch.profiler over the scheduler's steps (fields: rollserve.scheduler.profiler.ProfileRequest)."""
        return self._call(self.tokenizer_manager.rpc("start_profile", **fields))

    def stop_profile(self) -> dict:
        """Stops the profile; the answer's `files` are the trace and the op table written."""
        return self._call(self.tokenizer_manager.rpc("stop_profile"))

    def abort(self, rid: Optional[str] = None, abort_all: bool = False) -> None:
        self._call(self.tokenizer_manager.abort(rid, abort_all))

    def pause_generation(self, mode: str = "abort") -> dict:
        """SGLang's modes: abort (its default), retract, in_place; also keep (= in_place) and
        wait (running requests finish first). See SchedulerProcess.pause_generation."""
        return self._call(self.tokenizer_manager.rpc("pause_generation", mode=mode))

    def continue_generation(self) -> dict:
        return self._call(self.tokenizer_manager.rpc("continue_generation"))

    def get_server_info(self) -> dict:
        """The same dict as the server's /get_server_info (SGLang's keys plus ours)."""
        return server_info(self.server_args, self._call(self.tokenizer_manager.get_load()),
                           __version__)

    def get_model_info(self) -> dict:
        return self._call(self.tokenizer_manager.model_info())

    async def _start(self) -> None:
        self.tokenizer_manager.start()

    def _call(self, coro):
        if self._closed:
            coro.close()
            raise RuntimeError("the engine is shut down")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.tokenizer_manager.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __del__(self):
        try:
            self.shutdown()
        except Exception:
            pass
