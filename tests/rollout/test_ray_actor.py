"""The Ray engine actor on a local Ray with CPU bundles: generate and a weight update as
actor methods, and the same through the HTTP port an actor can serve. Skipped without ray
(`pip install "rollserve[ray]"`)."""

from __future__ import annotations

import httpx
import pytest

from rollserve.api.server import free_port
from tests.tiny_models import save_tiny_checkpoint

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.multiprocess

GREEDY = {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}
SERVER_ARGS = dict(max_total_tokens=4096, log_level="warning")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint_b(tmp_path_factory, default_model_dir):
    return save_tiny_checkpoint("llama", str(tmp_path_factory.mktemp("ray") / "b"),
                                default_model_dir, seed=1)


def test_actor_serves_generate_and_a_weight_update(local_ray, tiny_models, checkpoint_b):
    from rollserve.rollout.ray_actor import launch_engine_actors

    actors, group = launch_engine_actors(num_replicas=1, model_path=tiny_models["llama"],
                                         **SERVER_ARGS)
    actor = actors[0]
    try:
        before = ray.get(actor.generate.remote("The capital of France is", GREEDY))["output_ids"]
        update = ray.get(actor.update_weights_from_disk.remote(checkpoint_b, weight_version="b"))
        assert update["success"], update
        after = ray.get(actor.generate.remote("The capital of France is", GREEDY))
        assert after["output_ids"] != before and after["meta_info"]["weight_version"] == "b"
        assert ray.get(actor.get_server_info.remote())["tp_size"] == 1
        assert ray.get(actor.release_memory_occupation.remote())["success"]
        assert ray.get(actor.resume_memory_occupation.remote())["success"]
    finally:
        ray.get(actor.shutdown.remote())
        ray.util.remove_placement_group(group)


def test_actor_with_an_http_port(local_ray, tiny_models):
    from rollserve.rollout.ray_actor import launch_engine_actors

    port = free_port()
    actors, group = launch_engine_actors(num_replicas=1, http_ports=[port],
                                         model_path=tiny_models["llama"], **SERVER_ARGS)
    try:
        url = ray.get(actors[0].http_url.remote())
        assert url == f"http://127.0.0.1:{port}"
        direct = httpx.post(f"{url}/generate", timeout=120,
                            json={"text": "Hello", "sampling_params": GREEDY}).json()
        through_actor = ray.get(actors[0].generate.remote("Hello", GREEDY))
        assert direct["output_ids"] == through_actor["output_ids"]
    finally:
        ray.get(actors[0].shutdown.remote())
        ray.util.remove_placement_group(group)
