"""Standard errors of the scores, so a move from 0.4 to 0.2 on ten problems can be told
apart from noise.

* A metric that is a mean over examples (accuracy, exact match, per-problem pass@k and
  maj@k) gets the standard error of that mean: the sample standard deviation over
  sqrt(N) (for 0/1 outcomes, the binomial standard error sqrt(p(1-p)/(N-1))), as
  lm-evaluation-harness reports `acc_stderr`.
* A corpus-level metric (bits per byte, perplexity) gets a bootstrap over documents.
Each standard error is stored beside its metric as METRIC_stderr; the bands drawn and
logged are the normal 95% interval, value +- 1.96 * stderr; for bounded metrics widened
to cover the Wilson interval over the N problems (so 0 of 10 right still has a band)
and clipped to [0, 1].
"""

from __future__ import annotations

import math
import random
from typing import Callable, Dict, List, Optional, Sequence, Tuple

STDERR_SUFFIX = "_stderr"
Z95 = 1.96


def stderr_name(metric: str) -> str:
    return metric + STDERR_SUFFIX


def is_stderr(metric: str) -> bool:
    return metric.endswith(STDERR_SUFFIX)


def mean_stderr(values: Sequence[float]) -> float:
    """Standard error of the mean of `values`; nan for fewer than two."""
    n = len(values)
    if n < 2:
        return float("nan")
    mu = sum(values) / n
    variance = sum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def bootstrap_stderr(items: Sequence, statistic: Callable[[Sequence], float],
                     iterations: int = 500, seed: int = 1234) -> float:
    """Standard deviation of `statistic` over resamples (with replacement) of `items`;
    a fixed seed, so the same samples give the same standard error on every run."""
    n = len(items)
    if n < 2:
        return float("nan")
    r = random.Random(seed)
    values = []
    for _ in range(iterations):
        value = statistic([items[r.randrange(n)] for _ in range(n)])
        if math.isfinite(value):
            values.append(value)
    if len(values) < 2:
        return float("nan")
    mu = sum(values) / len(values)
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1))


def means_with_stderr(per_example: Dict[str, List[float]]) -> Dict[str, float]:
    """{metric: per-example values} -> {metric: mean, metric_stderr: its standard error}."""
    out: Dict[str, float] = {}
    for name, values in per_example.items():
        out[name] = sum(values) / len(values) if values else float("nan")
    for name, values in per_example.items():
        out[stderr_name(name)] = mean_stderr(values)
    return out


def wilson(p: float, n: int, z: float = Z95) -> Tuple[float, float]:
    """The Wilson score interval of a proportion p over n trials."""
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return center - half, center + half


def band(value: float, stderr: Optional[float], bounded: bool = False,
         n: Optional[int] = None, z: float = Z95) -> Optional[Tuple[float, float]]:
    """(low, high) of the 95% interval value +- z * stderr; None without a finite stderr.
    For a bounded metric over n problems it also covers the Wilson interval: at 0/10 right
    the standard error is 0, yet 0 of 10 does not rule out a rate of 0.28."""
    if stderr is None or not isinstance(stderr, (int, float)) or not math.isfinite(stderr):
        return None
    low, high = value - z * stderr, value + z * stderr
    if bounded:
        if n and 0.0 <= value <= 1.0:
            w_low, w_high = wilson(value, n, z)
            low, high = min(low, w_low), max(high, w_high)
        low, high = max(0.0, low), min(1.0, high)
    return low, high
