"""Scoring rules: math answer extraction and normalization, exact match, pass@k
(the unbiased estimator) and maj@k, and lm-evaluation-harness's acc / acc_norm.

Math answers compare by value when both sides parse as a number (integers,
decimals, thousands separators, `a/b`, `\\frac{a}{b}`), otherwise as normalized
strings, so "1,000", "1000.0" and "\\boxed{1000}" all match the answer 1000.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from fractions import Fraction
from typing import List, Optional, Sequence

# ---- finding the final answer in a generation ---------------------------------------------------
_GSM8K_FINAL = re.compile(r"####\s*([^\n]+)")
_ANSWER_IS = re.compile(r"answer is[:\s]*([^\n]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def extract_boxed(text: str) -> Optional[str]:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces matched; None if absent."""
    boxed, fbox = text.rfind("\\boxed"), text.rfind("\\fbox")
    if boxed < 0 and fbox < 0:
        return None
    rest = text[boxed + len("\\boxed"):] if boxed > fbox else text[fbox + len("\\fbox"):]
    if not rest.startswith("{"):  # "\boxed 5"
        match = re.match(r"\s+(\S+)", rest)
        return match.group(1) if match else None
    depth = 0
    for i, ch in enumerate(rest):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth == 0:
            return rest[1:i]
    return None  # unbalanced braces: the generation was cut off


def extract_final_answer(text: str) -> Optional[str]:
    """The answer a generation commits to: \\boxed{} first, then GSM8K's `#### N`,
    then "the answer is X", then the last number in the text."""
    for finder in (extract_boxed, _last_gsm8k, _answer_is, _last_number):
        found = finder(text)
        if found is not None and found.strip():
            return found.strip()
    return None


def _last_gsm8k(text: str) -> Optional[str]:
    matches = _GSM8K_FINAL.findall(text)
    return matches[-1] if matches else None


def _answer_is(text: str) -> Optional[str]:
    matches = _ANSWER_IS.findall(text)
    if not matches:
        return None
    answer = matches[-1].strip()
    boxed = extract_boxed(answer)
    return boxed if boxed is not None else re.split(r"\.(?:\s|$)", answer)[0]


def _last_number(text: str) -> Optional[str]:
    matches = _NUMBER.findall(text)
    return matches[-1] if matches else None


# ---- normalization ------------------------------------------------------------------------------
_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$")
_FRAC = re.compile(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}")
_FRAC_SHORT = re.compile(r"\\[dt]?frac(\d)(\d)")
_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}")
_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def parse_number(text: str) -> Optional[Fraction]:
    """The exact value of `text` if it is a number (int, decimal, `a/b`, `\\frac{a}{b}`)."""
    s = _strip_latex(text).replace(" ", "")
    s = s.rstrip(".")
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    s = re.sub(r"^\+", "", s)
    frac = _FRAC.fullmatch(s) or _FRAC_SHORT.fullmatch(s)
    if frac:
        s = f"{frac.group(1)}/{frac.group(2)}"
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    negative = s.startswith("-")
    body = s[1:] if negative else s
    try:
        if re.fullmatch(r"\d+(\.\d+)?/\d+(\.\d+)?|\d+(\.\d*)?|\.\d+", body):
            value = Fraction(body)  # Fraction reads "3/4" and "0.75" exactly
            return -value if negative else value
    except ZeroDivisionError:
        return None
    return None


def _strip_latex(text: str) -> str:
    s = text.strip()
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = _TEXT.sub(r"\1", s)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("\\%", "").replace("%", "")
    return s.strip()


def normalize_math_answer(text: Optional[str]) -> Optional[str]:
    """A canonical string: `p/q` or `p` for numbers, else lower-case text without spaces."""
    if text is None:
        return None
    value = parse_number(text)
    if value is not None:
        return str(value)
    s = _strip_latex(text)
    s = re.sub(r"\s+", "", s).rstrip(".").lower()
    return s or None


def math_equal(prediction: Optional[str], gold) -> bool:
    """Whether an extracted answer equals the gold answer (a string or a number)."""
    pred = normalize_math_answer(prediction)
    return pred is not None and pred == normalize_math_answer(str(gold))


def score_math(generation: str, gold) -> bool:
    return math_equal(extract_final_answer(generation), gold)


def normalize_text(text: str) -> str:
    return " ".join(text.strip().split())


def exact_match(prediction: str, gold, ignore_case: bool = False) -> bool:
    """Equal after trimming and collapsing whitespace (lm-eval's exact_match, plus case option)."""
    a, b = normalize_text(prediction), normalize_text(str(gold))
    return a.lower() == b.lower() if ignore_case else a == b


# ---- n samples per problem -------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is correct) from n samples with
    c correct: 1 - C(n-c, k) / C(n, k), as a product to stay exact for large n."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def majority_answer(answers: Sequence[Optional[str]]) -> Optional[str]:
    """Most frequent answer (ties: the one seen first); answers that are None do not vote."""
    votes = [a for a in answers if a is not None]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(a for a in votes if counts[a] == best)


def maj_at_k(normalized_answers: Sequence[Optional[str]], normalized_gold: Optional[str],
             k: int) -> float:
    """1.0 if the majority vote of the first k normalized answers is the gold answer."""
    winner = majority_answer(list(normalized_answers)[:k])
    return float(winner is not None and winner == normalized_gold)


def k_values(n: int) -> List[int]:
    """The k reported for n samples: powers of two below n, and n itself."""
    ks = [2 ** i for i in range(int(math.log2(n)) + 1)] if n >= 1 else []
    return sorted(set(k for k in ks if k <= n) | {n})


# ---- multiple choice (lm-evaluation-harness's definitions) ---------------------------------------
def multiple_choice_scores(loglikelihoods: Sequence[float], choices: Sequence[str],
                           gold: int) -> dict:
    """acc: argmax of summed loglikelihoods; acc_norm: argmax of loglikelihood divided
    by the choice's length in characters (lm-eval's completion_len)."""
    if len(loglikelihoods) != len(choices):
        raise ValueError("one loglikelihood per choice is needed")
    pred = max(range(len(choices)), key=lambda i: loglikelihoods[i])
    pred_norm = max(range(len(choices)),
                    key=lambda i: loglikelihoods[i] / max(len(choices[i]), 1))
    return {"acc": float(pred == gold), "acc_norm": float(pred_norm == gold),
            "pred": pred, "pred_norm": pred_norm}
