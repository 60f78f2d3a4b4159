"""GRPO's trainer side in plain torch: group-normalized advantages, the policy's
logprobs of sampled completions, and a clipped policy-gradient step that uses the
rollout logprobs (from the server) as the behaviour policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch


@dataclass
class Rollout:
    """One sampled completion, ready for the trainer."""
    prompt_ids: List[int]
    completion_ids: List[int]
    rollout_logprobs: List[float]  # the server's logprob of each completion token
    reward: float
    advantage: float = 0.0


@dataclass
class StepStats:
    loss: float
    kl: float
    clip_fraction: float
    logprob_max_abs_diff: float  # trainer vs server on the same tokens, before the update
    trained_sequences: int


def group_advantages(rewards: Sequence[float], eps: float = 1e-4) -> List[float]:
    """(r - mean) / (std + eps) within one group; all-equal rewards give zeros."""
    r = torch.tensor(rewards, dtype=torch.float64)
    std = r.std(unbiased=False)
    if std < eps:
        return [0.0] * len(rewards)
    return ((r - r.mean()) / (std + eps)).tolist()


def completion_logprobs(model, rollouts: Sequence[Rollout], pad_id: int) -> List[torch.Tensor]:
    """The policy's logprob of each completion token, one tensor per rollout.
    Logits are computed only on completion positions (the vocabulary projection
    is the largest matmul of a small model)."""
    seqs = [r.prompt_ids + r.completion_ids for r in rollouts]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        input_ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    hidden = model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    rows, targets, sizes = [], [], []
    for i, r in enumerate(rollouts):
        start = len(r.prompt_ids) - 1  # the position that predicts the first completion token
        rows.append(hidden[i, start:start + len(r.completion_ids)])
        targets.extend(r.completion_ids)
        sizes.append(len(r.completion_ids))
    logits = model.lm_head(torch.cat(rows)).float()
    logprobs = torch.log_softmax(logits, dim=-1)
    picked = logprobs.gather(1, torch.tensor(targets).view(-1, 1)).squeeze(1)
    return list(torch.split(picked, sizes))


def policy_loss(new: torch.Tensor, old: torch.Tensor, advantage: float, clip: float,
                ref: Optional[torch.Tensor], kl_coef: float):
    """PPO-clip surrogate averaged over the sequence's tokens, plus the k3 KL
    estimate to a reference policy when kl_coef > 0. Returns (loss, kl, clipped)."""
    ratio = torch.exp(new - old)
    surrogate = torch.minimum(ratio * advantage,
                              torch.clamp(ratio, 1 - clip, 1 + clip) * advantage)
    loss = -surrogate.mean()
    kl = torch.zeros(())
    if ref is not None and kl_coef > 0:
        log_ratio = ref - new
        kl = (torch.exp(log_ratio) - log_ratio - 1).mean()
        loss = loss + kl_coef * kl
    clipped = ((ratio - 1).abs() > clip).float().mean()
    return loss, kl.detach(), clipped.detach()


def train_step(model, optimizer, rollouts: List[Rollout], pad_id: int, micro_batch: int,
               clip: float = 0.2, kl_coef: float = 0.0, ref_model=None,
               max_grad_norm: float = 1.0) -> StepStats:
    """One optimizer step over all rollouts (gradients accumulated over micro
    batches). The loss is the mean over every rollout of the batch; rollouts with
    zero advantage add nothing without a KL term, so they are skipped."""
    trained = [r for r in rollouts if r.advantage != 0.0 or kl_coef > 0]
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = {"loss": 0.0, "kl": 0.0, "clip": 0.0, "diff": 0.0}
    for start in range(0, len(trained), micro_batch):
        chunk = trained[start:start + micro_batch]
        new = completion_logprobs(model, chunk, pad_id)
        ref = _reference_logprobs(ref_model, chunk, pad_id) if kl_coef > 0 else [None] * len(chunk)
        losses = []
        for r, lp, ref_lp in zip(chunk, new, ref):
            old = torch.tensor(r.rollout_logprobs)
            total["diff"] = max(total["diff"], (lp.detach() - old).abs().max().item())
            loss, kl, clipped = policy_loss(lp, old, r.advantage, clip, ref_lp, kl_coef)
            losses.append(loss)
            total["kl"] += kl.item()
            total["clip"] += clipped.item()
        batch_loss = torch.stack(losses).sum() / len(rollouts)
        batch_loss.backward()
        total["loss"] += batch_loss.item()
    if trained:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    count = max(len(trained), 1)
    return StepStats(loss=total["loss"], kl=total["kl"] / count, clip_fraction=total["clip"] / count,
                     logprob_max_abs_diff=total["diff"], trained_sequences=len(trained))


@torch.no_grad()
def _reference_logprobs(ref_model, rollouts, pad_id) -> List[torch.Tensor]:
    return completion_logprobs(ref_model, rollouts, pad_id)
