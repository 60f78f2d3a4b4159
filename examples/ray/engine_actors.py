"""rollserve replicas as Ray actors, driven like a trainer drives its rollout engines:
rollouts spread over the replicas, the devices handed to the trainer (release memory)
while it "trains", then the new weights pushed to every replica with a version label.

    pip install "rollserve[ray]"
    python examples/ray/engine_actors.py --replicas 2              # local Ray, CPU bundles
    python examples/ray/engine_actors.py --replicas 2 --tp-size 2  # on a node with 4 GPUs

The "training" here nudges the weights (the trainer's own step is not rollserve's part).
"""

from __future__ import annotations

import argparse
from typing import List, Optional

import ray
import torch

from rollserve.rollout.ray_actor import launch_engine_actors

PROMPTS = ["What is 2 + 3?", "Name a prime number.", "Spell 'cat' backwards.",
           "What colour is the sky?"]


def main(argv: Optional[List[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", default=None, help="HF folder (default: the embedded SmolLM2)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--tp-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4, help="samples per prompt (GRPO's n)")
    args = p.parse_args(argv)
    if args.model_path is None:
        from rollserve.frontend.default_model import default_model_path

        args.model_path = default_model_path()

    ray.init(ignore_reinit_error=True, include_dashboard=False)
    actors, group = launch_engine_actors(args.replicas, args.tp_size, model_path=args.model_path,
                                         max_total_tokens=8192, log_level="warning")
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=torch.float32)
    summary = {"samples": [], "weight_versions": []}
    try:
        for step in range(args.steps):
            # rollouts: each replica takes a share of the prompts, n samples each
            futures = [actor.generate.remote(PROMPTS[i::len(actors)], {
                "temperature": 1.0, "max_new_tokens": 16, "n": args.group_size})
                for i, actor in enumerate(actors)]
            outs = [o for batch in ray.get(futures) for o in batch]
            summary["samples"].append(len(outs))
            # the trainer's turn on the devices: the engines give their memory back meanwhile
            ray.get([a.release_memory_occupation.remote() for a in actors])
            with torch.no_grad():
                for param in policy.parameters():
                    param.mul_(1.0 + 1e-3)
            ray.get([a.resume_memory_occupation.remote() for a in actors])
            named = [(n, t.detach().clone()) for n, t in policy.state_dict().items()]
            version = f"step-{step + 1}"
            results = ray.get([a.update_weights_from_tensor.remote(named, weight_version=version)
                               for a in actors])
            assert all(r["success"] for r in results), results
            infos = ray.get([a.get_server_info.remote() for a in actors])
            summary["weight_versions"].append([i["weight_version"] for i in infos])
            print(f"step {step + 1}: {len(outs)} samples from {len(actors)} replicas; "
                  f"weights now {summary['weight_versions'][-1]}")
    finally:
        ray.get([a.shutdown.remote() for a in actors])
        ray.util.remove_placement_group(group)
    return summary


if __name__ == "__main__":
    main()
