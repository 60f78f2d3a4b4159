"""Standard errors, intervals, and the per-problem metrics of generation tasks: pass@k
against a hand-computed case, maj@k, and stderr beside every metric."""

from __future__ import annotations

import math

import pytest

from rollserve.eval import stats
from rollserve.eval.tasks.generation import majority_correct, sample_metrics


def test_mean_stderr_is_the_binomial_standard_error_for_0_1_outcomes():
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # p = 0.4, N = 10
    assert stats.mean_stderr(values) == pytest.approx(math.sqrt(0.4 * 0.6 / 9))
    assert math.isnan(stats.mean_stderr([1.0]))
    assert stats.mean_stderr([1.0, 1.0, 1.0]) == 0.0


def test_bootstrap_stderr_is_deterministic_and_near_the_analytic_one():
    values = [float(i % 3 == 0) for i in range(60)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    first = stats.bootstrap_stderr(values, mean, iterations=400)
    assert first == stats.bootstrap_stderr(values, mean, iterations=400)
    assert first == pytest.approx(stats.mean_stderr(values), rel=0.25)


def test_band_is_clipped_for_bounded_metrics():
    assert stats.band(0.5, 0.1) == pytest.approx((0.5 - 0.196, 0.5 + 0.196))
    assert stats.band(0.95, 0.1, bounded=True) == pytest.approx((0.754, 1.0))
    assert stats.band(0.5, float("nan")) is None and stats.band(0.5, None) is None


def test_band_of_a_bounded_metric_covers_the_wilson_interval():
    # 0 of 10 right: the standard error is 0, the Wilson interval is [0, 0.278]
    assert stats.band(0.0, 0.0, bounded=True, n=10) == pytest.approx((0.0, 0.2775), abs=1e-3)
    assert stats.band(1.0, 0.0, bounded=True, n=10) == pytest.approx((0.7225, 1.0), abs=1e-3)
    # away from the edges the normal interval is the wider one and stands
    assert stats.band(0.5, 0.16, bounded=True, n=10) == pytest.approx((0.5 - 0.3136, 0.5 + 0.3136))


def test_pass_at_k_and_maj_at_k_on_a_hand_computed_case():
    # problem a: 4 samples, 2 right -> pass@2 = 1 - C(2,2)/C(4,2) = 1 - 1/6
    # problem b: 4 samples, none right -> 0; problem c: all right -> 1
    samples = [
        {"answers": ["3", "5", "3", "5"], "correct": [True, False, True, False]},
        {"answers": ["1", "2", "2", None], "correct": [False, False, False, False]},
        {"answers": ["9", "9", "9", "9"], "correct": [True, True, True, True]},
    ]
    metrics = sample_metrics(samples, n=4)
    assert metrics["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert metrics["pass@2"] == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert metrics["pass@4"] == pytest.approx((1 + 0 + 1) / 3)
    assert metrics["exact_match"] == metrics["pass@1"]
    # maj@4 of a: "3" and "5" tie, the first seen ("3") wins and is right
    assert [majority_correct(s, 4) for s in samples] == [1.0, 0.0, 1.0]
    assert metrics["maj@4"] == pytest.approx(2 / 3)
    per_problem = [5 / 6, 0.0, 1.0]
    assert metrics["pass@2_stderr"] == pytest.approx(stats.mean_stderr(per_problem))
    assert all(stats.stderr_name(m) in metrics for m in metrics if not stats.is_stderr(m))
