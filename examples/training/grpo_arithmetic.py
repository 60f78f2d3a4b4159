"""GRPO on CPU against a live rollserve server: SmolLM2-135M-Instruct learns to
answer "What is 7+5? Answer with a number." correctly more often.

Each step: sample a group of completions per prompt through RolloutClient (with the
server's logprobs), score them (exact-answer reward, or a reward model served
through /classify), normalize rewards within each group, take one clipped
policy-gradient step on a torch copy of the policy, save checkpoint-N, and push the
new weights to the server (from that checkpoint, or from memory). Every sample must
carry the weight_version of the weights it was drawn from.

    python examples/training/grpo_arithmetic.py --sync disk
    python examples/training/grpo_arithmetic.py --sync tensor
    python examples/training/grpo_arithmetic.py --sync distributed   # SGLang-style group

It writes OUT/metrics.jsonl, OUT/reward_curve.png, checkpoints OUT/checkpoint-N and an
offline wandb run under OUT/wandb; plot_rewards.py draws several runs in one figure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from typing import List, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from arithmetic_task import Problem, chat_prompt, sample_problems, verifiable_reward  # noqa: E402
from checkpoints import remove_old_checkpoints, save_checkpoint, sync_weights  # noqa: E402
from distributed_sync import DistributedSync  # noqa: E402
from grpo import Rollout, group_advantages, train_step  # noqa: E402
from plot_rewards import plot  # noqa: E402
from run_log import RunLog  # noqa: E402

from rollserve.rollout import RolloutClient, Sample  # noqa: E402
from rollserve.rollout.parity import logprob_parity  # noqa: E402

SAMPLING = {"temperature": 1.0, "top_p": 1.0, "top_k": -1}  # the logprobs are of this policy
ALL_PROBLEMS = [Problem(a, b) for a in range(10) for b in range(10)]
LOGPROB_TOLERANCE = 1e-2  # trainer vs server on the same weights; far above float noise


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", default=None, help="HF folder (default: the embedded SmolLM2)")
    p.add_argument("--sync", choices=("disk", "tensor", "distributed"), default="disk",
                   help="update_weights_from_disk of each checkpoint, update_weights_from_tensors, "
                        "or a broadcast over a process group opened as SGLang's trainers open it "
                        "(update_weights_from_distributed)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts-per-step", type=int, default=4)
    p.add_argument("--group-size", type=int, default=8, help="samples per prompt (GRPO's G)")
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--train-layers", type=int, default=10,
                   help="train only the top N decoder layers and the final norm (0: all "
                        "parameters); fewer layers make a CPU step cheaper")
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--kl-coef", type=float, default=0.0, help="> 0 keeps a frozen reference copy")
    p.add_argument("--micro-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default=None,
                   help="checkpoints, metrics.jsonl, wandb (default: a folder under /tmp)")
    p.add_argument("--save-every", type=int, default=5,
                   help="with --sync tensor, save checkpoint-N every this many steps and at the "
                        "end (--sync disk saves every step: the server loads from it)")
    p.add_argument("--keep-checkpoints", type=int, default=2)
    p.add_argument("--reward-model", default=None,
                   help="score with a reward model through /classify: a server URL, a "
                        "*ForSequenceClassification folder, or 'build' (train a tiny one first)")
    p.add_argument("--server-url", default=None, help="use a running server instead of launching one")
    p.add_argument("--server-arg", action="append", default=[],
                   help="extra `rollserve serve` argument for the launched server (repeatable)")
    p.add_argument("--no-eval", action="store_true", help="skip the greedy eval at start and end")
    p.add_argument("--wandb-mode", choices=("offline", "online", "disabled"), default="offline")
    p.add_argument("--wandb-project", default="rollserve-grpo")
    return p.parse_args(argv)


def server_args(args) -> List[str]:
    # The body limit is raised so one tensor bucket (base64) fits in a request.
    return ["--max-total-tokens", "16384", "--max-request-body-bytes", str(512 << 20),
            *args.server_arg]


@contextlib.contextmanager
def rollout_client(args, model_path: str, log_file):
    if args.server_url:
        with RolloutClient(args.server_url, progress=False) as client:
            yield client
    else:
        with RolloutClient.launch(model_path, server_args=server_args(args), log_file=log_file,
                                  progress=False) as client:
            yield client


@contextlib.contextmanager
def reward_scorer(args, model_path: str, out_dir: str, log_file):
    """score(problems, completions) -> rewards: exact answers, or the reward model."""
    if not args.reward_model:
        yield lambda problems, texts: [verifiable_reward(p, t) for p, t in zip(problems, texts)]
        return
    from reward_model import served_reward_model

    with served_reward_model(args.reward_model, model_path, out_dir, log_file) as scorer:
        yield scorer


def freeze_lower_layers(model, train_layers: int) -> None:
    """Only the top `train_layers` decoder layers and the final norm learn (the
    embeddings, tied to the output head in SmolLM2, stay as they are)."""
    if train_layers <= 0:
        return
    layers = model.model.layers
    if train_layers > len(layers):
        raise ValueError(f"--train-layers: the model has {len(layers)} layers, got {train_layers}")
    model.requires_grad_(False)
    for layer in layers[len(layers) - train_layers:]:
        layer.requires_grad_(True)
    model.model.norm.requires_grad_(True)


def check_versions(groups: Sequence[Sequence[Sample]], expected: str) -> None:
    wrong = {s.weight_version for g in groups for s in g} - {expected}
    if wrong:
        raise RuntimeError(f"samples drawn from weight_version {sorted(wrong)}, expected {expected!r}")


def greedy_accuracy(client: RolloutClient, tokenizer, max_new_tokens: int) -> float:
    groups = client.generate(input_ids=[chat_prompt(tokenizer, p) for p in ALL_PROBLEMS],
                             sampling_params={"temperature": 0, "max_new_tokens": max_new_tokens},
                             return_logprob=False)
    return sum(verifiable_reward(p, g[0].text) for p, g in zip(ALL_PROBLEMS, groups)) / len(groups)


def build_rollouts(prompt_ids, groups, rewards_per_group) -> List[Rollout]:
    rollouts = []
    for ids, group, rewards in zip(prompt_ids, groups, rewards_per_group):
        for s, reward, adv in zip(group, rewards, group_advantages(rewards)):
            rollouts.append(Rollout(ids, s.output_ids, s.output_logprobs, reward, adv))
    return rollouts


def run(args) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rollserve.frontend.default_model import default_model_path

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model_path = args.model_path or default_model_path()
    out_dir = args.out_dir or os.path.join(tempfile.gettempdir(), "rollserve-grpo", args.sync)
    os.makedirs(out_dir, exist_ok=True)
    remove_old_checkpoints(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    policy = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    freeze_lower_layers(policy, args.train_layers)
    ref_model = None
    if args.kl_coef > 0:
        ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=args.lr,
                                  betas=(0.9, 0.99), weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    started = time.perf_counter()
    server_log = open(os.path.join(out_dir, "server.log"), "w")
    with contextlib.ExitStack() as stack:
        stack.callback(server_log.close)
        client = stack.enter_context(rollout_client(args, model_path, server_log))
        score = stack.enter_context(reward_scorer(args, model_path, out_dir, server_log))
        group = None
        if args.sync == "distributed":
            group = DistributedSync(client)
            stack.callback(group.close)
        log = stack.enter_context(RunLog(out_dir, vars(args), args.wandb_mode, args.wandb_project,
                                         run_name=f"grpo-{args.sync}"))
        version = client.get_model_info()["weight_version"]
        summary = {"greedy_accuracy_start": None if args.no_eval else
                   greedy_accuracy(client, tokenizer, args.max_new_tokens)}
        print(f"start: weight_version {version!r}, greedy accuracy {summary['greedy_accuracy_start']}",
              flush=True)
        for step in range(1, args.steps + 1):
            version = one_step(args, step, version, rng, client, score, policy, ref_model,
                               optimizer, tokenizer, pad_id, out_dir, log, group)
        if not args.no_eval:
            summary["greedy_accuracy_end"] = greedy_accuracy(client, tokenizer, args.max_new_tokens)
        summary.update(steps=args.steps, sync=args.sync, wall_time_s=round(time.perf_counter() - started, 1),
                       final_weight_version=version, out_dir=out_dir)
        log.summary(summary)
    plot([log.path], [f"sync {args.sync}"], os.path.join(out_dir, "reward_curve.png"))
    print(f"done: {summary}", flush=True)
    return summary


def one_step(args, step, version, rng, client, score, policy, ref_model, optimizer, tokenizer,
             pad_id, out_dir, log, group=None) -> str:
    """Rollout, score, train, save, sync; returns the weight_version now served."""
    t0 = time.perf_counter()
    problems = sample_problems(rng, args.prompts_per_step)
    prompt_ids = [chat_prompt(tokenizer, p) for p in problems]
    groups = client.generate(input_ids=prompt_ids, n=args.group_size,
                             sampling_params={**SAMPLING, "max_new_tokens": args.max_new_tokens})
    check_versions(groups, version)
    t1 = time.perf_counter()
    texts = [s.text for g in groups for s in g]
    owners = [p for p, g in zip(problems, groups) for _ in g]
    rewards = score(owners, texts)
    exact = [verifiable_reward(p, t) for p, t in zip(owners, texts)]
    per_group = [rewards[i:i + args.group_size] for i in range(0, len(rewards), args.group_size)]
    rollouts = build_rollouts(prompt_ids, groups, per_group)
    # every sample, before the update: the engine's logprobs against this trainer's forward
    parity = logprob_parity(policy, prompt_ids, groups, temperature=SAMPLING["temperature"])
    t2 = time.perf_counter()
    stats = train_step(policy, optimizer, rollouts, pad_id, args.micro_batch, args.clip,
                       args.kl_coef, ref_model)
    if stats.logprob_max_abs_diff > LOGPROB_TOLERANCE:
        raise RuntimeError(f"the server's logprobs differ from the trainer's by "
                           f"{stats.logprob_max_abs_diff:.3g}: the weights are out of sync")
    t3 = time.perf_counter()
    checkpoint = None
    if args.sync == "disk" or step % args.save_every == 0 or step == args.steps:
        checkpoint = save_checkpoint(policy, tokenizer, out_dir, step, args.keep_checkpoints)
    t4 = time.perf_counter()
    new_version = f"step-{step}"
    sync_weights(client, policy, args.sync, checkpoint, new_version, group)
    t5 = time.perf_counter()
    metrics = {
        "reward/mean": sum(rewards) / len(rewards), "reward/exact_answer": sum(exact) / len(exact),
        "loss": stats.loss, "kl": stats.kl, "clip_fraction": stats.clip_fraction,
        "logprob_max_abs_diff": stats.logprob_max_abs_diff,
        "parity/mean_abs_diff": parity["mean_abs_diff"], "parity/max_abs_diff": parity["max_abs_diff"],
        "parity/kl": parity["kl"],
        "trained_sequences": stats.trained_sequences,
        "completion_tokens/mean": sum(s.completion_tokens for g in groups for s in g) / len(texts),
        "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/train_s": t3 - t2,
        "time/save_s": t4 - t3, "time/sync_s": t5 - t4, "time/step_s": t5 - t0,
    }
    log.log(step, metrics)
    print(f"step {step:3d}  reward {metrics['reward/mean']:.3f}  exact {metrics['reward/exact_answer']:.3f}"
          f"  |dlogp| {stats.logprob_max_abs_diff:.1e}  kl {parity['kl']:.1e}  rollout {t1 - t0:.1f}s  train {t3 - t2:.1f}s"
          f"  sync({args.sync}) {t5 - t4:.1f}s", flush=True)
    return new_version


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the launched servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run(parse_args())
