"""TRL's GRPOTrainer with rollserve as its generation server, on CPU.

    rollserve serve --port 8000 &             # or let this script launch one
    python examples/trl/grpo_trl.py --server-url http://127.0.0.1:8000 --steps 5

The trainer is TRL's (GRPOConfig(use_vllm=True, vllm_mode="server",
vllm_server_base_url=URL)); rollserve samples the completions through vLLM's
/v1/completions protocol and receives every weight update TRL pushes. The task: make
completions of a number prompt short (reward = -length), which a few steps move.
rollserve_trl.py lists what TRL needs besides the URL on a machine without vLLM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from rollserve_trl import use_rollserve_weight_sync  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="HF folder (default: the embedded SmolLM2)")
    p.add_argument("--server-url", default=None, help="a running rollserve server (else launched)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--max-completion-length", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--out-dir", default=None)
    p.add_argument("--group-port", type=int, default=None, help="port of the weight-sync group")
    return p.parse_args(argv)


def brevity_reward(completions, **kwargs):
    """Shorter is better: -(characters / 10)."""
    return [-len(c) / 10.0 for c in completions]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(args, model_path):
    if args.server_url:
        yield args.server_url
        return
    from rollserve.rollout.launch import launched_server

    with launched_server(model_path, ["--max-total-tokens", "8192"]) as url:
        yield url


def run(args) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from rollserve.frontend.default_model import default_model_path

    use_rollserve_weight_sync(backend="gloo")
    model_path = args.model_path or default_model_path()
    out_dir = args.out_dir or os.path.join(tempfile.gettempdir(), "rollserve-trl-grpo")
    prompts = [f"Count from {i}:" for i in range(16)]
    with server(args, model_path) as url:
        config = GRPOConfig(
            output_dir=out_dir, use_cpu=True, bf16=False, max_steps=args.steps,
            per_device_train_batch_size=args.num_generations,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length, learning_rate=args.lr,
            logging_steps=1, report_to=[], save_strategy="no", seed=0,
            use_vllm=True, vllm_mode="server", vllm_server_base_url=url,
            vllm_group_port=args.group_port or _free_port(), vllm_server_timeout=60,
            # rollserve's logprobs of the filtered distribution tokens were drawn from
            # (vLLM's processed_logprobs), for TRL's importance-sampling correction
            generation_kwargs={"logprob_mode": "sampling"})
        trainer = GRPOTrainer(model=model_path, reward_funcs=brevity_reward, args=config,
                              train_dataset=Dataset.from_dict({"prompt": prompts}))
        trainer.train()
        history = [h for h in trainer.state.log_history if "reward" in h]
        for h in history:
            print(json.dumps({"step": h.get("step"), "reward": h["reward"],
                              "completion_length": h.get("completions/mean_length")}), flush=True)
        trainer.vllm_generation.vllm_client.close_communicator()
        # TRL compares the server's logprobs with its own forward pass on the same tokens:
        # near zero only if the server sampled with the weights TRL just pushed
        diffs = [h.get("sampling/sampling_logp_difference/max") for h in history]
        return {"steps": trainer.state.global_step, "rewards": [h["reward"] for h in history],
                "max_logprob_diff": max(d for d in diffs if d is not None) if any(
                    d is not None for d in diffs) else None}


if __name__ == "__main__":
    print(run(parse_args()))
