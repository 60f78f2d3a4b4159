"""Trainer parity: do the engine's logprobs equal the trainer's forward pass?

    from rollserve.rollout.parity import logprob_parity
    report = logprob_parity(model, prompt_ids, groups)   # model: the trainer's (transformers)
    # {"tokens": 4096, "mean_abs_diff": 3e-6, "max_abs_diff": 3e-5, "mean_diff": -1e-7,
    #  "kl": 1e-11, "sequences": 64}

The trainer's model (any dtype, any device: its own numerics are the reference) scores
prompt + completion in one forward per batch of sequences; its logprob of each completion
token is log_softmax(logits / temperature), the convention of the engine's default
logprobs (README, logprob convention). Reported per batch of rollouts:

* mean_abs_diff / max_abs_diff: |engine - trainer| over every completion token;
* mean_diff: engine - trainer, signed (a bias shows here, noise does not);
* kl: an estimate of KL(engine || trainer) from the sampled tokens, the k3 estimator
  mean(exp(r) - 1 - r) with r = trainer - engine (unbiased for tokens drawn from the
  engine's policy, never negative, low variance: Schulman, "Approximating KL divergence").
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch


def parity_report(engine: Sequence[Sequence[float]], trainer: Sequence[Sequence[float]]
                  ) -> Dict[str, float]:
    """The figures above from per-sequence lists of logprobs (equal lengths pairwise)."""
    if len(engine) != len(trainer):
        raise ValueError(f"{len(engine)} engine sequences but {len(trainer)} trainer ones")
    diffs: List[float] = []
    for i, (e, t) in enumerate(zip(engine, trainer)):
        if len(e) != len(t):
            raise ValueError(f"sequence {i}: {len(e)} engine logprobs but {len(t)} trainer ones")
        diffs.extend(float(a) - float(b) for a, b in zip(e, t))
    if not diffs:
        return {"sequences": len(engine), "tokens": 0, "mean_abs_diff": 0.0, "max_abs_diff": 0.0,
                "mean_diff": 0.0, "kl": 0.0}
    n = len(diffs)
    return {"sequences": len(engine), "tokens": n,
            "mean_abs_diff": sum(abs(d) for d in diffs) / n,
            "max_abs_diff": max(abs(d) for d in diffs),
            "mean_diff": sum(diffs) / n,
            "kl": sum(math.expm1(-d) + d for d in diffs) / n}  # r = -d: exp(r) - 1 - r


@torch.no_grad()
def trainer_logprobs(model, prompt_ids: Sequence[Sequence[int]],
                     output_ids: Sequence[Sequence[int]], temperature: float = 1.0,
                     batch_size: int = 8) -> List[List[float]]:
    """The model's logprob of every output token given its prompt and the outputs before
    it; sequences right-padded in batches of batch_size (attention mask keeps pads out)."""
    device = next(model.parameters()).device
    scale = 1.0 if temperature <= 0 else float(temperature)  # greedy: the logits unscaled
    out: List[List[float]] = []
    for start in range(0, len(prompt_ids), batch_size):
        prompts = prompt_ids[start:start + batch_size]
        outputs = output_ids[start:start + batch_size]
        seqs = [list(p) + list(o) for p, o in zip(prompts, outputs)]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits / scale, dim=-1)
        for row, (p, o) in enumerate(zip(prompts, outputs)):
            if not o:
                out.append([])
                continue
            positions = torch.arange(len(p) - 1, len(p) - 1 + len(o), device=logprobs.device)
            picked = logprobs[row, positions, torch.tensor(list(o), device=logprobs.device)]
            out.append(picked.tolist())
    return out


def logprob_parity(model, prompt_ids: Sequence[Sequence[int]], groups, temperature: float = 1.0,
                   batch_size: int = 8) -> Dict[str, float]:
    """parity_report of RolloutClient samples (groups as generate() returns them, or a flat
    list of Sample) against `model`. prompt_ids[i] is the prompt of samples whose
    prompt_index is i. Samples need output_logprobs (return_logprob, the client's default)."""
    samples = [s for g in groups for s in (g if isinstance(g, (list, tuple)) else [g])]
    missing = [k for k, s in enumerate(samples) if s.output_logprobs is None]
    if missing:
        raise ValueError(f"samples {missing[:5]} carry no output_logprobs: generate with "
                         "return_logprob=True")
    prompts = [prompt_ids[s.prompt_index] for s in samples]
    trainer = trainer_logprobs(model, prompts, [s.output_ids for s in samples], temperature,
                               batch_size)
    return parity_report([s.output_logprobs for s in samples], trainer)
