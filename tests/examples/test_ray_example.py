"""examples/ray/engine_actors.py on a local Ray with CPU bundles: two replicas, two steps of
rollouts, memory release/resume and a weight push; every replica ends on the new version."""

import importlib.util
import os

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "ray", "engine_actors.py")

pytestmark = pytest.mark.multiprocess


def test_two_replicas_two_steps(tiny_models):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        spec = importlib.util.spec_from_file_location("engine_actors", EXAMPLE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        summary = module.main(["--model-path", tiny_models["llama"], "--replicas", "2",
                               "--steps", "2", "--group-size", "2"])
    finally:
        ray.shutdown()
    assert summary["samples"] == [8, 8]  # 4 prompts x n=2, over both replicas
    assert summary["weight_versions"] == [["step-1", "step-1"], ["step-2", "step-2"]]
