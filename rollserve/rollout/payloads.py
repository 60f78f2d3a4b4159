"""Request bodies and answer checks shared by the sync and asyncio clients
(no I/O here). Field names and shapes are SGLang's native API."""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from rollserve.rollout.errors import RolloutError, error_message

RETRY_STATUSES = (502, 503, 504)  # a proxy or a server that is starting or restarting
BODY_OVERHEAD_BYTES = 1 << 20  # JSON fields and safetensors header around a bucket's bytes
CHUNK_ITEMS = 64  # classify/encode items per call, so a big batch spreads over replicas


def normalize_urls(urls) -> List[str]:
    listed = [urls] if isinstance(urls, str) else list(urls or [])
    if not listed or not all(isinstance(u, str) and u for u in listed):
        raise ValueError("urls: give a server URL or a non-empty list of them")
    return [u.rstrip("/") for u in listed]


def backoff_delay(backoff: float, attempt: int) -> float:
    return backoff * (2 ** attempt)


def check_answer(status: int, body: Any) -> Any:
    if 200 <= status < 300:
        return body
    raise RolloutError(f"HTTP {status}: {error_message(body)}", status, body)


# ---- generate ----------------------------------------------------------------------------------
def _is_ids(value) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                           for t in value)


def prompt_fields(prompts, input_ids) -> List[Dict[str, Any]]:
    """One {"text": ...} or {"input_ids": ...} per prompt."""
    if (prompts is None) == (input_ids is None):
        raise ValueError("prompts: give exactly one of prompts or input_ids")
    if prompts is not None:
        listed = [prompts] if isinstance(prompts, str) else prompts
        if not isinstance(listed, (list, tuple)) or not all(isinstance(p, str) for p in listed):
            raise ValueError("prompts: must be a string or a list of strings")
        return [{"text": p} for p in listed]
    listed = [input_ids] if _is_ids(input_ids) and input_ids else input_ids
    if not isinstance(listed, (list, tuple)) or not all(_is_ids(ids) for ids in listed):
        raise ValueError("input_ids: must be a list of token ids or a list of such lists")
    return [{"input_ids": list(ids)} for ids in listed]


def group_sampling_params(sampling_params: Optional[dict], n: int) -> dict:
    params = dict(sampling_params or {})
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: must be an integer >= 1, got {n!r}")
    if params.get("n", n) != n and n != 1:
        raise ValueError(f"n: given as {n} and as sampling_params.n = {params['n']}")
    params["n"] = params.get("n", n)
    return params


def generate_payloads(prompts, input_ids, n: int, sampling_params: Optional[dict],
                      return_logprob: bool, logprob_start_len: int,
                      top_logprobs_num: int, image_data: Optional[list] = None) -> Tuple[List[dict], int]:
    """One /generate body per prompt (its n samples go together) and the group size.
    image_data (VLMs): one entry per prompt, an image, a list of images or None."""
    params = group_sampling_params(sampling_params, n)
    shared = {"sampling_params": params, "return_logprob": return_logprob,
              "logprob_start_len": logprob_start_len, "top_logprobs_num": top_logprobs_num}
    bodies = [{**fields, **shared} for fields in prompt_fields(prompts, input_ids)]
    if image_data is not None:
        if not isinstance(image_data, list) or len(image_data) != len(bodies):
            raise ValueError(f"image_data: needs one entry (an image, a list of images or None) "
                             f"per prompt, {len(bodies)} here")
        for body, images in zip(bodies, image_data):
            if images is not None:
                body["image_data"] = images
    return bodies, params["n"]


# ---- classify / encode ----------------------------------------------------------------------------
def _is_conversation(value) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) for m in value)


def _chunks(field: str, items: list) -> List[dict]:
    return [{field: items[i:i + CHUNK_ITEMS]} for i in range(0, len(items), CHUNK_ITEMS)]


def classify_payloads(texts=None, conversations=None, input_ids=None) -> List[dict]:
    given = [name for name, v in (("texts", texts), ("conversations", conversations),
                                  ("input_ids", input_ids)) if v is not None]
    if len(given) != 1:
        raise ValueError("texts: give exactly one of texts, conversations or input_ids")
    if texts is not None:
        return _chunks("text", _text_list(texts))
    if conversations is not None:
        listed = [conversations] if _is_conversation(conversations) and conversations else conversations
        if not isinstance(listed, list) or not listed or not all(_is_conversation(c) for c in listed):
            raise ValueError("conversations: must be a list of {role, content} messages "
                             "or a list of such conversations")
        return _chunks("messages", listed)
    return _chunks("input_ids", _ids_list(input_ids))


def encode_payloads(texts=None, input_ids=None) -> List[dict]:
    if (texts is None) == (input_ids is None):
        raise ValueError("texts: give exactly one of texts or input_ids")
    if texts is not None:
        return _chunks("text", _text_list(texts))
    return _chunks("input_ids", _ids_list(input_ids))


def _text_list(texts) -> list:
    listed = [texts] if isinstance(texts, str) else texts
    if not isinstance(listed, (list, tuple)) or not listed or not all(isinstance(t, str) for t in listed):
        raise ValueError("texts: must be a string or a non-empty list of strings")
    return list(listed)


def _ids_list(input_ids) -> list:
    listed = [input_ids] if _is_ids(input_ids) and input_ids else input_ids
    if not isinstance(listed, (list, tuple)) or not listed or not all(_is_ids(i) for i in listed):
        raise ValueError("input_ids: must be a list of token ids or a list of such lists")
    return [list(ids) for ids in listed]


def chunk_size(body: dict) -> int:
    """Items in a classify/encode body (its one field holds the list)."""
    return len(next(iter(body.values())))


def items_of(body: Any) -> list:
    return body if isinstance(body, list) else [body]


# ---- weight updates -------------------------------------------------------------------------------
def disk_update_payload(model_path: str, weight_version: Optional[str], load_format: Optional[str],
                        flush_cache: bool, abort_all_requests: bool,
                        in_flight: Optional[dict] = None) -> dict:
    if not isinstance(model_path, str) or not model_path:
        raise ValueError("model_path: give the checkpoint folder")
    payload = {"model_path": model_path, "flush_cache": flush_cache,
               "abort_all_requests": abort_all_requests, "weight_version": weight_version,
               **(in_flight or {})}
    if load_format is not None:
        payload["load_format"] = load_format
    return payload


# the pause a bucketed push holds generation with, by in_flight_requests: nothing may run
# between buckets, and what is in flight is settled as the mode says (weight_sync/service.py)
PUSH_PAUSE_MODES = {None: "wait", "wait": "wait", "retract": "retract", "in_place": "in_place",
                    "restart": "retract", "abort": "abort"}


def in_flight_fields(in_flight_requests: Optional[str], in_flight_timeout: Optional[float]) -> dict:
    """The update body's in-flight fields; left out when not set (the server's defaults)."""
    if in_flight_requests not in PUSH_PAUSE_MODES:
        raise ValueError(f"in_flight_requests: one of {sorted(k for k in PUSH_PAUSE_MODES if k)} "
                         f"or None, got {in_flight_requests!r}")
    fields = {"in_flight_requests": in_flight_requests, "in_flight_timeout": in_flight_timeout}
    return {k: v for k, v in fields.items() if v is not None}


def max_bucket_bytes(body_limit: Optional[int]) -> int:
    """The most tensor bytes a bucket may hold so that its request (base64 of a
    safetensors blob in JSON, 4/3 of the bytes) stays under the server's body limit."""
    if not body_limit:
        return 1 << 62
    return max((body_limit - BODY_OVERHEAD_BYTES) * 3 // 4, 1)


def tensor_buckets(named_tensors: Sequence[Tuple[str, Any]], bucket_bytes: int) -> List[list]:
    """Consecutive (name, tensor) pairs grouped so each bucket holds about
    bucket_bytes (a tensor bigger than that gets a bucket of its own)."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes: must be > 0, got {bucket_bytes}")
    buckets, current, size = [], [], 0
    for name, tensor in named_tensors:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        buckets.append(current)
    if not buckets:
        raise ValueError("named_tensors: give at least one (name, tensor) pair")
    return buckets


def tensor_update_payloads(named_tensors, weight_version: Optional[str],
                           bucket_bytes: int, in_flight: Optional[dict] = None) -> Iterator[dict]:
    """The /update_weights_from_tensor bodies, serialized one bucket at a time; only
    the last one flushes the cache and sets the weight version."""
    from rollserve.weight_sync.tensor_transport import serialize_named_tensors

    buckets = tensor_buckets(list(named_tensors), bucket_bytes)
    for i, bucket in enumerate(buckets):
        last = i == len(buckets) - 1
        yield {"serialized_named_tensors": [serialize_named_tensors(bucket)],
               "flush_cache": last, "weight_version": weight_version if last else None,
               **(in_flight or {})}


def merge_replica_answers(answers: Dict[str, dict]) -> dict:
    """One answer for a call sent to every replica: the first replica's fields,
    success only if all succeeded, and each replica's own answer under `replicas`."""
    first = next(iter(answers.values()))
    merged = dict(first) if isinstance(first, dict) else {"result": first}
    # a plain-text answer (SGLang's /flush_cache) came with a 2xx: that replica succeeded
    merged["success"] = all(a.get("success", True) if isinstance(a, dict) else True
                            for a in answers.values())
    if all(isinstance(a, dict) for a in answers.values()):
        if "num_paused_requests" in merged:
            merged["num_paused_requests"] = sum(a.get("num_paused_requests", 0)
                                                for a in answers.values())
    merged["replicas"] = answers
    return merged
