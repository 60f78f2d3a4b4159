"""The verifiable task: small additions with an exact answer.

"What is 7+5? Answer with a number." scores 1.0 when the last integer in the
answer is 12, else 0.0 (the usual "last number" extraction of math RL rewards).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import List, Optional

INTEGER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Problem:
    a: int
    b: int

    @property
    def question(self) -> str:
        return f"What is {self.a}+{self.b}? Answer with a number."

    @property
    def answer(self) -> int:
        return self.a + self.b


def sample_problems(rng: random.Random, count: int, max_operand: int = 9) -> List[Problem]:
    return [Problem(rng.randint(0, max_operand), rng.randint(0, max_operand)) for _ in range(count)]


def extract_answer(completion: str) -> Optional[int]:
    numbers = INTEGER.findall(completion.replace(",", ""))
    return int(numbers[-1]) if numbers else None


def verifiable_reward(problem: Problem, completion: str) -> float:
    return 1.0 if extract_answer(completion) == problem.answer else 0.0


def chat_prompt(tokenizer, problem: Problem) -> List[int]:
    """The prompt's token ids; the trainer and the server see exactly these."""
    messages = [{"role": "user", "content": problem.question}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)
