"""Scoring rules: math answer extraction/normalization, exact match, pass@k, maj@k, acc/acc_norm."""

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollserve.eval import scorers
from rollserve.eval.tasks.generation import ANSWER_RULES


@pytest.mark.parametrize("text, expected", [
    ("so the total is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{3}{4}} and later \\boxed{7}", "7"),               # the last box wins
    ("nested \\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),  # braces matched
    ("\\fbox{12}", "12"),
    ("answer: \\boxed 9", "9"),
    ("She has 5 + 3 = 8 apples.\n#### 8", "8"),                       # GSM8K final answer
    ("#### 1,234\n", "1,234"),
    ("First 12, then 15. The answer is 27.", "27"),
    ("The answer is $\\frac{1}{2}$.", "$\\frac{1}{2}$"),
    ("we get 3 then 4 and finally 10", "10"),                         # last number
    ("the totals were 1,000 and 2,500", "2,500"),
    ("no digits here", None),
    ("", None),
])
def test_extract_final_answer(text, expected):
    assert scorers.extract_final_answer(text) == expected


@pytest.mark.parametrize("answer, gold", [
    ("1,000", "1000"), ("1000.0", "1000"), ("0.75", "3/4"), ("\\frac{3}{4}", "0.75"),
    ("\\dfrac{6}{8}", "3/4"), ("\\frac34", "3/4"), ("-2/4", "-0.5"), ("+7", "7"), ("$18", "18"),
    ("18.", "18"), ("50\\%", "50"), ("90^\\circ", "90"), ("\\text{Paris}", "paris"),
    ("(-3)", "-3"), (".5", "1/2"),
])
def test_math_equal_same_value(answer, gold):
    assert scorers.math_equal(answer, gold)


@pytest.mark.parametrize("answer, gold", [
    ("0.333", "1/3"), ("1,00", "100"), ("12", "21"), ("-5", "5"), (None, "5"), ("7/0", "7"),
])
def test_math_equal_different(answer, gold):
    assert not scorers.math_equal(answer, gold)


def test_parse_number_is_exact():
    from fractions import Fraction

    assert scorers.parse_number("2.50") == Fraction(5, 2)
    assert scorers.parse_number("12,345.5") == Fraction(24691, 2)
    assert scorers.parse_number("3/4") == Fraction(3, 4)
    assert scorers.parse_number("three") is None
    assert scorers.normalize_math_answer("6/8") == "3/4"
    assert scorers.normalize_math_answer("  A  B ") == "ab"


def test_score_math_end_to_end():
    assert scorers.score_math("2 cakes need 2 * 3/4 = 6/4 cups.\n#### 1.5", "3/2")
    assert scorers.score_math("The answer is \\boxed{1,500}", 1500)
    assert not scorers.score_math("#### 14", "41")


def test_exact_match():
    assert scorers.exact_match("  Paris\n", "Paris")
    assert scorers.exact_match("New   York", "New York")
    assert not scorers.exact_match("paris", "Paris")
    assert scorers.exact_match("paris", "Paris", ignore_case=True)
    key, gold = ANSWER_RULES["exact_match_ci"]
    assert key(" PARIS ") == gold("paris")


def _pass_at_k_by_subsets(n, c, k):
    """Fraction of the k-subsets of n samples (c correct) that hold a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@given(st.integers(1, 40).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_closed_form(nck):
    n, c, k = nck
    closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
    assert scorers.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12)


@pytest.mark.parametrize("n, c, k", [(5, 2, 1), (5, 2, 2), (6, 1, 3), (8, 0, 4), (7, 7, 3), (9, 3, 6)])
def test_pass_at_k_matches_enumeration(n, c, k):
    assert scorers.pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_subsets(n, c, k), abs=1e-12)


def test_pass_at_k_edges_and_errors():
    assert scorers.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert scorers.pass_at_k(10, 0, 10) == 0.0
    assert scorers.pass_at_k(10, 1, 10) == 1.0
    # large n stays finite where the binomials would be huge
    assert 0 < scorers.pass_at_k(2000, 3, 50) < 1
    for bad in [(5, 6, 1), (5, 2, 0), (5, 2, 6), (5, -1, 1)]:
        with pytest.raises(ValueError):
            scorers.pass_at_k(*bad)


def test_majority_and_maj_at_k():
    assert scorers.majority_answer(["3", "4", "4", "3"]) == "3"  # tie: seen first
    assert scorers.majority_answer([None, None, "5"]) == "5"   # no answer does not vote
    assert scorers.majority_answer([None]) is None
    assert scorers.maj_at_k(["1", "2", "2", "2"], "2", 4) == 1.0
    assert scorers.maj_at_k(["1", "2", "2", "2"], "2", 1) == 0.0  # only the first counts
    assert scorers.maj_at_k([None, None], None, 2) == 0.0
    assert scorers.k_values(1) == [1]
    assert scorers.k_values(8) == [1, 2, 4, 8]
    assert scorers.k_values(5) == [1, 2, 4, 5]


def test_multiple_choice_acc_and_acc_norm():
    # the short choice has the highest total; per character the longer one wins
    scores = scorers.multiple_choice_scores([-4.0, -9.0, -4.1], ["ab", "abcdefghij", "abcdefgh"], 0)
    assert scores["pred"] == 0 and scores["acc"] == 1.0
    assert scores["pred_norm"] == 2 and scores["acc_norm"] == 0.0
    with pytest.raises(ValueError):
        scorers.multiple_choice_scores([-1.0], ["a", "b"], 0)
