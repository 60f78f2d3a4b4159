"""The front process's half of weight sync, shared by rollserve.Engine and the HTTP routes.

Each call is one control call to the scheduler (run between two forward steps, see
service.py). The scheduler owns weight_version (stamped on every result); the front
asks it when /get_model_info needs it.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

from rollserve.weight_sync.distributed import DEFAULT_GROUP_NAME


def _update_response(result: dict) -> dict:
    answer = {"success": bool(result.get("success")), "message": result.get("message", ""),
              "num_paused_requests": int(result.get("num_paused_requests", 0))}
    if result.get("in_flight_requests"):  # the mode applied (weight_sync/service.py)
        answer["in_flight_requests"] = result["in_flight_requests"]
    return answer


def _plain(result: dict) -> dict:
    return {"success": bool(result.get("success")), "message": result.get("message", "")}


async def update_weights_from_disk(tm, model_path: str, load_format: Optional[str] = None,
                                   flush_cache: bool = True, abort_all_requests: bool = False,
                                   weight_version: Optional[str] = None,
                                   in_flight_requests: Optional[str] = None,
                                   in_flight_timeout: Optional[float] = None,
                                   validate_only: bool = False) -> dict:
    """in_flight_requests / in_flight_timeout: what happens to requests in flight
    (weight_sync/service.py; None: wait for them, or the pause's mode while paused).
    validate_only: check the checkpoint, write nothing."""
    result = await tm.rpc("update_weights_from_disk", model_path=model_path,
                          load_format=load_format, flush_cache=flush_cache,
                          abort_all_requests=abort_all_requests, weight_version=weight_version,
                          in_flight_requests=in_flight_requests,
                          in_flight_timeout=in_flight_timeout, validate_only=validate_only)
    if result.get("success"):
        tm.model_path = model_path  # as SGLang: /get_model_info names the checkpoint now served
    return _update_response(result)


async def update_weights_from_tensor(tm, serialized_named_tensors: Sequence[str],
                                     load_format: Optional[str] = None, flush_cache: bool = True,
                                     abort_all_requests: bool = False,
                                     weight_version: Optional[str] = None,
                                     allow_pickle: bool = False,
                                     in_flight_requests: Optional[str] = None,
                                     in_flight_timeout: Optional[float] = None) -> dict:
    """allow_pickle: the caller is a trusted local peer (weight_sync/pickled_tensors.py)."""
    result = await tm.rpc("update_weights_from_tensor",
                          serialized_named_tensors=list(serialized_named_tensors),
                          load_format=load_format, flush_cache=flush_cache,
                          abort_all_requests=abort_all_requests, weight_version=weight_version,
                          allow_pickle=allow_pickle, in_flight_requests=in_flight_requests,
                          in_flight_timeout=in_flight_timeout)
    return _update_response(result)


async def init_weights_update_group(tm, master_address: str, master_port: int, rank_offset: int,
                                    world_size: int, group_name: str = DEFAULT_GROUP_NAME,
                                    backend: Optional[str] = None) -> dict:
    return _plain(await tm.rpc("init_weights_update_group", master_address=master_address,
                               master_port=master_port, rank_offset=rank_offset,
                               world_size=world_size, group_name=group_name, backend=backend))


async def update_weights_from_distributed(tm, names: List[str], dtypes: List[str],
                                          shapes: List[List[int]],
                                          group_name: str = DEFAULT_GROUP_NAME,
                                          flush_cache: bool = True,
                                          abort_all_requests: bool = False,
                                          weight_version: Optional[str] = None,
                                          load_format: Optional[str] = None,
                                          in_flight_requests: Optional[str] = None,
                                          in_flight_timeout: Optional[float] = None) -> dict:
    result = await tm.rpc("update_weights_from_distributed", names=list(names),
                          dtypes=[str(d) for d in dtypes], shapes=[list(s) for s in shapes],
                          group_name=group_name, flush_cache=flush_cache,
                          abort_all_requests=abort_all_requests, weight_version=weight_version,
                          load_format=load_format, in_flight_requests=in_flight_requests,
                          in_flight_timeout=in_flight_timeout)
    return _update_response(result)


async def destroy_weights_update_group(tm, group_name: str = DEFAULT_GROUP_NAME) -> dict:
    return _plain(await tm.rpc("destroy_weights_update_group", group_name=group_name))


async def get_weights_by_name(tm, name: str, truncate_size: int = 100) -> dict:
    """{success, message} or {success: True, values: [float, ...]} (flattened, truncated)."""
    return await tm.rpc("get_weights_by_name", name=name, truncate_size=truncate_size)


async def release_memory_occupation(tm, tags: Optional[List[str]] = None) -> dict:
    return _plain(await tm.rpc("release_memory_occupation", tags=tags))


async def resume_memory_occupation(tm, tags: Optional[List[str]] = None) -> dict:
    return _plain(await tm.rpc("resume_memory_occupation", tags=tags))
