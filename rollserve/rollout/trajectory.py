"""Token-exact multi-turn rollouts: one growing list of token ids per conversation.

A conversation is continued by appending token ids, never by re-tokenizing its text:
the model's turn is appended exactly as /generate sampled it (`output_ids`), the
environment's turn (a tool result, the next user message) as the token ids of just that
new text. The trainer then trains on exactly the tokens the policy produced, with the
logprobs it produced them with, and the server's prefix cache serves every earlier turn
(meta_info.cached_tokens). docs/multiturn.md walks through it.

    traj = Trajectory(prompt_ids)
    sample = client.generate(input_ids=[traj.ids], sampling_params=...)[0][0]
    traj.add_model_turn(sample)
    traj.add_context(tokenizer.encode(tool_turn_text, add_special_tokens=False))
    # traj.ids, traj.loss_mask, traj.logprobs: what the trainer trains on
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from rollserve.rollout.sample import Sample


@dataclass
class Turn:
    start: int  # index in Trajectory.ids of the turn's first token
    end: int
    by_model: bool
    weight_version: Optional[str] = None  # the weights that sampled a model turn
    cached_tokens: int = 0  # how much of the turn's prompt the server's cache held
    finish_reason: Optional[dict] = None


@dataclass
class Trajectory:
    """ids = prompt + turns; loss_mask 1 on the tokens the model sampled, 0 on the prompt
    and on what the environment appended; logprobs the sampling logprob of each model
    token (None elsewhere)."""

    prompt_ids: List[int]
    ids: List[int] = field(default_factory=list)
    loss_mask: List[int] = field(default_factory=list)
    logprobs: List[Optional[float]] = field(default_factory=list)
    turns: List[Turn] = field(default_factory=list)

    def __post_init__(self):
        if not self.ids:
            self.ids = list(self.prompt_ids)
            self.loss_mask = [0] * len(self.ids)
            self.logprobs = [None] * len(self.ids)

    def add_model_turn(self, sample: Sample) -> Turn:
        """The tokens one /generate call on `self.ids` sampled, as it sampled them."""
        if sample.prompt_tokens != len(self.ids):
            raise ValueError(f"the sample continues {sample.prompt_tokens} tokens, the "
                             f"trajectory has {len(self.ids)}: generate on trajectory.ids")
        out = list(sample.output_ids)
        logprobs = sample.output_logprobs or [None] * len(out)
        turn = Turn(len(self.ids), len(self.ids) + len(out), True, sample.weight_version,
                    sample.cached_tokens, sample.finish_reason)
        self.ids += out
        self.loss_mask += [1] * len(out)
        self.logprobs += list(logprobs)
        self.turns.append(turn)
        return turn

    def add_context(self, ids: List[int]) -> Turn:
        """Tokens the environment appends (a tool's answer, the next user turn): in the
        context of the next turn, out of the loss."""
        turn = Turn(len(self.ids), len(self.ids) + len(ids), False)
        self.ids += list(ids)
        self.loss_mask += [0] * len(ids)
        self.logprobs += [None] * len(ids)
        self.turns.append(turn)
        return turn

    @property
    def completion_ids(self) -> List[int]:
        """Everything after the prompt (what a trainer's sequence adds to it)."""
        return self.ids[len(self.prompt_ids):]

    @property
    def completion_mask(self) -> List[int]:
        return self.loss_mask[len(self.prompt_ids):]


_STAND_IN = "\x00rollserve-turn\x00"  # an assistant answer no real text contains


def next_turn_text(tokenizer, messages: List[dict], *, eos_sampled: bool = True,
                   **template_kwargs) -> str:
    """The text the chat template puts after a model turn for `messages` (a tool answer,
    the next user message), generation prompt included: tokenize just this and
    `add_context` its ids. `eos_sampled`: the model's turn ended on its end-of-turn
    token (in output_ids), so only what the template writes after that token is added;
    else (cut off by max_new_tokens) the end of the turn is added too.
    `template_kwargs` (tools=..., enable_thinking=...) as for apply_chat_template."""
    base = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _STAND_IN}]
    before = tokenizer.apply_chat_template(base, tokenize=False, **template_kwargs)
    after = tokenizer.apply_chat_template(base + list(messages), tokenize=False,
                                          add_generation_prompt=True, **template_kwargs)
    if not after.startswith(before):
        raise ValueError("the chat template renders earlier turns differently once more "
                         "follow; build the next turn's text by hand")
    turn_end = before[before.index(_STAND_IN) + len(_STAND_IN):]  # e.g. "<|im_end|>\n"
    eos = tokenizer.eos_token or ""
    if eos_sampled and eos and turn_end.startswith(eos):
        turn_end = turn_end[len(eos):]
    return turn_end + after[len(before):]
