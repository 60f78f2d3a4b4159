"""(c) Perplexity over a set of texts: every token scored given the ones before it
(texts longer than the context are cut into windows), reported like lm-eval's
loglikelihood_rolling tasks: token, word and byte level."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import List, Tuple

import rollserve.eval.stats as stats
from rollserve.eval.tasks.base import EvalContext, EvalSettings, Task, TaskResult
from rollserve.eval.tasks.requests import loglikelihoods, prefix_token_id


def windows(tokens: List[int], prefix: int, max_len: int) -> List[Tuple[List[int], List[int]]]:
    """(context, continuation) pairs covering every token once: the first window starts
    from the prefix token, each later one from the last token of the window before."""
    if max_len < 2:
        raise ValueError("the context must hold at least 2 tokens")
    pairs, start = [], 0
    while start < len(tokens):
        end = min(len(tokens), start + max_len - 1)
        context = [prefix] if start == 0 else [tokens[start - 1]]
        pairs.append((context, tokens[start:end]))
        start = end
    return pairs


@dataclass
class PerplexityTask(Task):
    name: str
    rows: List[dict]  # {"id", "text"}
    kind: str = "perplexity"

    def size(self, settings: EvalSettings) -> int:
        return len(settings.take(self.rows))

    def evaluate(self, ctx: EvalContext) -> TaskResult:
        start = time.perf_counter()
        rows = ctx.settings.take(self.rows)
        tokenizer = ctx.tokenizer
        prefix = prefix_token_id(tokenizer)
        per_row = [windows(tokenizer.encode(r["text"], add_special_tokens=False), prefix,
                           ctx.context_length) for r in rows]
        flat = [pair for pairs in per_row for pair in pairs]
        lls = iter(loglikelihoods(ctx, flat, units_per_pair=len(rows) / max(len(flat), 1)))
        samples = []
        for row, pairs in zip(rows, per_row):
            total = sum(next(lls) for _ in pairs)
            samples.append({"id": row["id"], "prompt": row["text"], "loglikelihood": total,
                            "tokens": sum(len(cont) for _, cont in pairs),
                            "words": len(row["text"].split()),
                            "bytes": len(row["text"].encode("utf-8"))})
        metrics = corpus_metrics(samples)
        # a bootstrap over documents: the metric is a ratio of sums, not a mean of rows
        for name in ("bits_per_byte", "perplexity"):
            metrics[stats.stderr_name(name)] = stats.bootstrap_stderr(
                samples, lambda rows, name=name: corpus_metrics(rows)[name])
        return TaskResult(task=self.name, kind=self.kind, metrics=metrics,
                          samples=samples, num_examples=len(rows),
                          seconds=time.perf_counter() - start)


def corpus_metrics(samples: List[dict]) -> dict:
    """Corpus-level (weighted by length), as lm-eval aggregates them."""
    ll = sum(s["loglikelihood"] for s in samples)
    tokens = sum(s["tokens"] for s in samples)
    words = sum(s["words"] for s in samples)
    nbytes = sum(s["bytes"] for s in samples)
    return {"perplexity": _exp(-ll / tokens) if tokens else float("nan"),
            "word_perplexity": _exp(-ll / words) if words else float("nan"),
            "bits_per_byte": -ll / (nbytes * math.log(2)) if nbytes else float("nan")}


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")
