"""A learned reward for the arithmetic task, served by a second rollserve server and
queried through /classify.

`build` makes a LlamaForSequenceClassification out of the policy's own checkpoint:
the pretrained backbone, frozen, plus a score head fitted as a logistic-regression
probe on its last-token features. The probe learns from synthetic answers to the
100 problems, written in a few styles ("12", "7 + 5 = 12", "The answer is 12.")
that are right, off by a little, or have no number at all, labelled by the
exact-answer rule. It takes a minute or two on CPU. (A tiny transformer trained
from scratch on the same data stayed near 0.6 balanced accuracy in that time.)

The score head has no bias, so served scores are the probe's logits minus a
constant; GRPO normalizes rewards within each group, where a constant cancels.
"""

from __future__ import annotations

import contextlib
import os
import random
from typing import Callable, Iterator, List, Sequence, Tuple

import torch

from arithmetic_task import Problem, verifiable_reward

from rollserve.rollout import RolloutClient

STYLES = ["{c}", "{c}.", "The answer is {c}.", "{a} + {b} = {c}", "{a}+{b} = {c}",
          "{a} + {b} equals {c}.", "{c} is the sum of {a} and {b}."]
NO_NUMBER = ["I am not sure.", "That is a good question!", "Numbers are fun to add.",
             "Let me think about it."]
NEAR_MISSES = (-3, -2, -1, 1, 2, 3, 10)
PAD_ID = 0  # <|endoftext|>: never inside a chat-formatted conversation
FEATURE_BATCH = 64

Scorer = Callable[[Sequence[Problem], Sequence[str]], List[float]]


def conversation(problem: Problem, completion: str) -> list:
    return [{"role": "user", "content": problem.question},
            {"role": "assistant", "content": completion}]


def conversation_ids(tokenizer, problem: Problem, completion: str) -> List[int]:
    """As the server's /classify renders a conversation (chat template, no generation prompt)."""
    text = tokenizer.apply_chat_template(conversation(problem, completion), tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def synthetic_examples() -> List[Tuple[Problem, str, float]]:
    """Every problem, answered in every style with the right sum or a near miss,
    plus answers with no number; labelled by the exact-answer rule."""
    examples = []
    for a in range(10):
        for b in range(10):
            p = Problem(a, b)
            for style in STYLES:
                for c in sorted({p.answer, *(max(0, p.answer + d) for d in NEAR_MISSES)}):
                    text = style.format(a=a, b=b, c=c)
                    examples.append((p, text, verifiable_reward(p, text)))
            for text in NO_NUMBER:
                examples.append((p, text, 0.0))
    return examples


def balanced_sample(rng: random.Random, per_label: int) -> List[Tuple[Problem, str, float]]:
    examples = synthetic_examples()
    right = [e for e in examples if e[2] == 1.0]
    wrong = [e for e in examples if e[2] == 0.0]
    chosen = rng.sample(right, min(per_label, len(right))) + rng.sample(wrong, per_label)
    rng.shuffle(chosen)
    return chosen


@torch.no_grad()
def last_token_features(backbone, tokenizer, examples) -> torch.Tensor:
    """The backbone's final (normed) hidden state at each conversation's last token:
    what a sequence-classification head reads."""
    rows = []
    for start in range(0, len(examples), FEATURE_BATCH):
        seqs = [conversation_ids(tokenizer, p, t) for p, t, _ in examples[start:start + FEATURE_BATCH]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, :len(s)] = 1
        hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        rows.append(hidden[torch.arange(len(seqs)), mask.sum(1) - 1])
    return torch.cat(rows)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, iterations: int = 1500,
              weight_decay: float = 1e-3) -> torch.Tensor:
    """Logistic regression on standardized features; returns the weight in the
    original feature space (the bias and the mean are a constant, dropped)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    x = (features - mean) / std
    w = torch.zeros(features.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(iterations):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, labels)
        loss = loss + weight_decay * (w ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (w / std).detach()


def balanced_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """At the best threshold (served scores carry no bias); mean of the accuracies
    on right and on wrong answers."""
    best = 0.0
    for threshold in scores.tolist():
        predicted = (scores >= threshold).float()
        best = max(best, 0.5 * (predicted[labels == 1].mean() + (1 - predicted[labels == 0]).mean()).item())
    return best


def build_reward_model(policy_path: str, out_dir: str, per_label: int = 500,
                       seed: int = 0) -> Tuple[str, float]:
    """Saves the reward model; returns (folder, balanced accuracy on held-out answers)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    lm = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    examples = balanced_sample(random.Random(seed), per_label)
    features = last_token_features(lm.model, tokenizer, examples)
    labels = torch.tensor([label for _, _, label in examples])
    split = len(examples) * 4 // 5
    weight = fit_probe(features[:split], labels[:split])
    accuracy = balanced_accuracy(features[split:] @ weight, labels[split:])

    config = lm.config
    config.architectures = ["LlamaForSequenceClassification"]
    config.num_labels = 1
    config.pad_token_id = PAD_ID
    classifier = AutoModelForSequenceClassification.from_config(config)
    classifier.model.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        classifier.score.weight.copy_(weight.view(1, -1))
    classifier.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, accuracy


@contextlib.contextmanager
def served_reward_model(spec: str, policy_path: str, out_dir: str, log_file) -> Iterator[Scorer]:
    """spec: a server URL, a classification checkpoint folder, or 'build'. Yields a
    scorer whose reward is the model's score (a logit: higher is more likely right)."""
    with contextlib.ExitStack() as stack:
        if spec.startswith(("http://", "https://")):
            client = stack.enter_context(RolloutClient(spec, progress=False))
        else:
            path = spec
            if spec == "build":
                path, accuracy = build_reward_model(policy_path, os.path.join(out_dir, "reward-model"))
                print(f"reward model built: balanced accuracy {accuracy:.3f} on held-out answers "
                      f"({path})", flush=True)
            client = stack.enter_context(RolloutClient.launch(
                path, server_args=["--max-total-tokens", "8192"], log_file=log_file, progress=False))

        def score(problems: Sequence[Problem], completions: Sequence[str]) -> List[float]:
            conversations = [conversation(p, c) for p, c in zip(problems, completions)]
            return [s[0] for s in client.classify(conversations=conversations)]

        yield score
