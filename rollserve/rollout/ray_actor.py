"""rollserve engines as Ray actors, for trainers whose jobs place their workers with Ray
(verl, OpenRLHF, slime). `pip install "rollserve[ray]"`.

    import ray
    from rollserve.rollout.ray_actor import launch_engine_actors

    ray.init()
    actors, group = launch_engine_actors(num_replicas=2, tp_size=2, model_path="/models/x")
    ray.get(actors[0].generate.remote("Hello", {"max_new_tokens": 8}))
    ray.get([a.update_weights_from_disk.remote("/ckpt/step-10") for a in actors])

Each actor is one replica: it owns a rollserve.Engine (whose --tp-size scheduler processes
use the GPUs Ray gave the actor) and exposes the Engine API as actor methods: generate,
update_weights_from_disk / _from_tensor / _from_distributed, init/destroy_weights_update_group,
release/resume_memory_occupation (so a trainer can share the GPUs, as verl's hybrid engine
does), flush_cache, get_server_info. With `http_port` the actor also serves the HTTP API on
that port (the engine then runs in a server process the actor owns, and the methods go
through it). Placement: one bundle per replica holding its tp_size GPUs (the TP ranks are
the engine's own child processes, so they share the actor's bundle).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any, Dict, List, Optional, Sequence, Tuple

from rollserve.rollout.engine import Engine


class EngineActor:
    """The class Ray wraps (`ray.remote(EngineActor)`); usable without Ray too."""

    def __init__(self, http_port: Optional[int] = None, http_host: str = "127.0.0.1",
                 **server_args):
        self.url: Optional[str] = None
        self.engine: Optional[Engine] = None
        self.server: Optional[mp.Process] = None
        if http_port is None:
            self.engine = Engine(**server_args)
        else:
            self._start_http(http_host, int(http_port), server_args)

    def _start_http(self, host: str, port: int, server_args: Dict[str, Any]) -> None:
        from rollserve.api.dp_launch import wait_for
        from rollserve.api.server import launch_server
        from rollserve.frontend.server_args import ServerArgs

        args = ServerArgs.from_kwargs(**server_args, host=host, port=port)
        self.server = mp.get_context("spawn").Process(target=launch_server, args=(args,),
                                                      name="rollserve-http")
        self.server.start()
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        wait_for([self.url], 600.0, [self.server], args.api_key)

    def _post(self, path: str, body: Optional[dict] = None) -> Any:
        import httpx

        r = httpx.post(self.url + path, json=body or {}, timeout=None)
        try:
            return r.json()
        except ValueError:
            return {"success": r.status_code < 400, "message": r.text}

    # ---- the Engine API --------------------------------------------------------------------
    def generate(self, prompt=None, sampling_params: Optional[dict] = None, input_ids=None,
                 **kwargs) -> Any:
        if self.engine is not None:
            return self.engine.generate(prompt, sampling_params, input_ids=input_ids, **kwargs)
        body = {"sampling_params": sampling_params or {}, **kwargs}
        body.update({"text": prompt} if prompt is not None else {"input_ids": input_ids})
        return self._post("/generate", body)

    def update_weights_from_disk(self, model_path: str, **kwargs) -> dict:
        if self.engine is not None:
            return self.engine.update_weights_from_disk(model_path, **kwargs)
        return self._post("/update_weights_from_disk", {"model_path": model_path, **kwargs})

    def update_weights_from_tensor(self, named_tensors: Sequence[Tuple[str, Any]], **kwargs) -> dict:
        if self.engine is not None:
            return self.engine.update_weights_from_tensor(named_tensors, **kwargs)
        from rollserve.weight_sync.tensor_transport import serialize_named_tensors

        return self._post("/update_weights_from_tensor", {
            "serialized_named_tensors": [serialize_named_tensors(list(named_tensors))], **kwargs})

    def init_weights_update_group(self, **kwargs) -> dict:
        if self.engine is not None:
            return self.engine.init_weights_update_group(**kwargs)
        return self._post("/init_weights_update_group", kwargs)

    def update_weights_from_distributed(self, **kwargs) -> dict:
        if self.engine is not None:
            return self.engine.update_weights_from_distributed(**kwargs)
        return self._post("/update_weights_from_distributed", kwargs)

    def destroy_weights_update_group(self, **kwargs) -> dict:
        if self.engine is not None:
            return self.engine.destroy_weights_update_group(**kwargs)
        return self._post("/destroy_weights_update_group", kwargs)

    def release_memory_occupation(self, tags: Optional[List[str]] = None) -> dict:
        if self.engine is not None:
            return self.engine.release_memory_occupation(tags)
        return self._post("/release_memory_occupation", {"tags": tags})

    def resume_memory_occupation(self, tags: Optional[List[str]] = None) -> dict:
        if self.engine is not None:
            return self.engine.resume_memory_occupation(tags)
        return self._post("/resume_memory_occupation", {"tags": tags})

    def flush_cache(self) -> dict:
        if self.engine is not None:
            return self.engine.flush_cache()
        return self._post("/flush_cache")

    def get_server_info(self) -> dict:
        if self.engine is not None:
            return self.engine.get_server_info()
        import httpx

        return httpx.get(self.url + "/get_server_info", timeout=60).json()

    def http_url(self) -> Optional[str]:
        return self.url

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None
        if self.server is not None and self.server.is_alive():
            self.server.terminate()
            self.server.join(timeout=30)
            if self.server.is_alive():
                self.server.kill()


def launch_engine_actors(num_replicas: int = 1, tp_size: int = 1, use_gpu: Optional[bool] = None,
                         placement_group=None, http_ports: Optional[Sequence[int]] = None,
                         **server_args) -> Tuple[list, Any]:
    """`num_replicas` EngineActors on a placement group (made here when not given: one bundle
    per replica, {"GPU": tp_size, "CPU": 1}, or {"CPU": 1} without GPUs); returns (actors,
    placement group) once every actor has started its engine."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if use_gpu is None:
        use_gpu = bool(ray.cluster_resources().get("GPU"))
    bundle = {"GPU": tp_size, "CPU": 1} if use_gpu else {"CPU": 1}
    if placement_group is None:
        placement_group = ray.util.placement_group([dict(bundle)] * num_replicas, strategy="PACK")
        ray.get(placement_group.ready())
    remote = ray.remote(EngineActor)
    actors = []
    for i in range(num_replicas):
        kwargs = dict(server_args, tp_size=tp_size)
        if http_ports is not None:
            kwargs["http_port"] = http_ports[i]
        if not use_gpu:
            kwargs.setdefault("device", "cpu")
        actors.append(remote.options(
            num_cpus=1, num_gpus=tp_size if use_gpu else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group, placement_group_bundle_index=i)).remote(**kwargs))
    ray.get([a.get_server_info.remote() for a in actors])  # started, or the error surfaces
    return actors, placement_group
