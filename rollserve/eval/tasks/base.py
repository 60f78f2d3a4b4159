"""What every task shares: the settings of a run, the context a task runs in (clients,
tokenizer, progress), and the result it returns."""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from rollserve.core.sampling_params import InvalidRequest


@dataclass
class EvalSettings:
    limit: Optional[int] = None          # examples per task (the first N)
    n: int = 1                           # samples per prompt for generation tasks
    temperature: Optional[float] = None  # None: 0 (greedy) when n == 1, else 1.0
    top_p: float = 1.0
    max_new_tokens: Optional[int] = None  # None: the task's own default
    seed: Optional[int] = 0
    batch_size: int = 32                 # requests in flight at once (progress moves per request)
    stop: Optional[Sequence[str]] = None  # None: each generation task's own stop strings
    apply_chat_template: bool = False    # generation prompts as one user turn of the chat template
    system_instruction: Optional[str] = None  # system turn (or, without a template, a prefix)

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise InvalidRequest("limit", "must be >= 1")
        if self.n < 1:
            raise InvalidRequest("n", "must be >= 1")
        if self.temperature is not None and self.temperature < 0:
            raise InvalidRequest("temperature", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p", "must be in (0, 1]")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens", "must be >= 1")
        if self.batch_size < 1:
            raise InvalidRequest("batch_size", "must be >= 1")
        if self.stop is not None and not all(isinstance(x, str) and x for x in self.stop):
            raise InvalidRequest("stop", "stop strings must be non-empty")

    def sampling_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.n == 1 else 1.0

    def take(self, rows: List[Any]) -> List[Any]:
        return rows if self.limit is None else rows[:self.limit]


@dataclass
class TaskResult:
    task: str
    kind: str
    metrics: Dict[str, float]
    samples: List[Dict[str, Any]]  # one JSON-able record per example
    num_examples: int
    seconds: float = 0.0


@dataclass
class EvalContext:
    """What a task may use: the policy server's client, an optional reward-model
    client, the tokenizer (loaded on first use), and a progress callback. Every response's
    weight_version is counted in `weight_versions` (the watcher checks them)."""

    client: Any  # RolloutClient
    settings: EvalSettings = field(default_factory=EvalSettings)
    tokenizer_path: Optional[str] = None  # default: the server's tokenizer_path
    reward_client: Any = None
    advance: Callable[[int], None] = lambda n: None
    weight_versions: Counter = field(default_factory=Counter)

    @functools.cached_property
    def model_info(self) -> dict:
        return self.client.get_model_info()

    @functools.cached_property
    def tokenizer(self):
        from transformers import AutoTokenizer

        info = self.model_info if self.tokenizer_path is None else {}
        path = self.tokenizer_path or info.get("tokenizer_path") or info.get("model_path")
        if not path:
            raise InvalidRequest("tokenizer", "the server did not say where its tokenizer is; "
                                              "pass --tokenizer")
        return AutoTokenizer.from_pretrained(path)

    @property
    def context_length(self) -> int:
        return int(self.model_info.get("context_length") or 2048)

    @functools.cached_property
    def request_pool(self):
        """Threads that keep settings.batch_size requests in flight."""
        from concurrent.futures import ThreadPoolExecutor

        return ThreadPoolExecutor(self.settings.batch_size, thread_name_prefix="eval-request")

    def render_prompt(self, text: str) -> str:
        """A generation prompt as sent: with apply_chat_template, one user turn (after the
        system instruction) and the assistant's generation prompt, as lm-eval renders a
        prompt without fewshot_as_multiturn; without it, the system instruction (if any)
        and a blank line before the text."""
        s = self.settings
        if not s.apply_chat_template:
            return f"{s.system_instruction}\n\n{text}" if s.system_instruction else text
        messages = ([{"role": "system", "content": s.system_instruction}]
                    if s.system_instruction else []) + [{"role": "user", "content": text}]
        tokenizer = self.tokenizer
        if not getattr(tokenizer, "chat_template", None):
            raise InvalidRequest("apply_chat_template",
                                 f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')} has "
                                 "no chat template")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class Task:
    """A dataset plus a scorer. `size(settings)` counts progress units (examples)."""

    name: str
    kind: str
    overrides: Dict[str, Any] = {}  # EvalSettings fields of this task alone (n, temperature...)

    def settings_for(self, settings: EvalSettings) -> EvalSettings:
        """The run's settings with this task's own overrides."""
        return dataclasses.replace(settings, **self.overrides) if self.overrides else settings

    def size(self, settings: EvalSettings) -> int:
        """Progress units: by default one per example of `self.rows` taken."""
        return len(settings.take(getattr(self, "rows")))

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        raise NotImplementedError


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
