"""Math answer checking: extraction, normalized equality, math-verify's equivalence, in
the main thread (its SIGALRM timeouts) and from another thread (a worker process)."""

from __future__ import annotations

import threading

import pytest

from rollserve.eval import answer_check
from rollserve.eval.answer_check import EXACT, SYMBOLIC, check

needs_math_verify = pytest.mark.skipif(not answer_check.have_math_verify(),
                                       reason="math-verify is not installed")


def test_right_answers_by_normalized_form():
    v = check("so we get \\boxed{\\frac{1}{2}}", "0.5")
    assert (v.extracted, v.key, v.correct, v.how) == ("\\frac{1}{2}", "1/2", True, EXACT)
    v = check("Adding up: 1,000 + 234.\n#### 1,234", "1234")
    assert v.correct and v.extracted == "1,234"
    assert check("The answer is 72.", "72").correct


def test_wrong_and_malformed_answers():
    wrong = check("The answer is \\boxed{7}", "8")
    assert (wrong.extracted, wrong.correct, wrong.how) == ("7", False, None)
    malformed = check("I do not know, sorry.", "8")
    assert (malformed.extracted, malformed.key, malformed.correct) == (None, None, False)
    cut_off = check("so the result is \\boxed{\\frac{1}{", "1/2")  # generation cut mid-box
    assert not cut_off.correct


@needs_math_verify
def test_symbolic_equivalence_in_the_main_thread():
    v = check("Therefore \\boxed{x^2+1}", "1+x^2")
    assert v.correct and v.how == SYMBOLIC
    assert check("\\boxed{\\sqrt{4}}", "2").correct
    assert not check("\\boxed{x^2-1}", "1+x^2").correct


@needs_math_verify
def test_symbolic_equivalence_off_the_main_thread_uses_a_worker_process():
    verdicts = []
    thread = threading.Thread(target=lambda: verdicts.extend(
        [check("\\boxed{2\\pi}", "\\pi+\\pi"), check("\\boxed{3\\pi}", "\\pi+\\pi")]))
    thread.start()
    thread.join(timeout=120)
    assert [v.correct for v in verdicts] == [True, False]
    assert verdicts[0].how == SYMBOLIC
