"""Is a generated math answer right? The final answer is extracted (scorers.
extract_final_answer: \\boxed{}, `#### N`, "the answer is X", the last number), then
compared with the gold answer: equal normalized forms first (scorers.normalize_math_answer),
then math-verify's symbolic equivalence ("\\frac{1}{2}" = "0.5", "x^2+1" = "1+x^2").

math-verify bounds its parsing and comparison with SIGALRM, which Python only allows in
the main thread. So in the main thread it runs here, with its own timeouts; from any
other thread (the watcher scoring checkpoints concurrently) the check goes to a worker
process, where it is that process's main thread, and a worker that does not answer in
time is killed and the answer counted wrong. Without math-verify installed only the
normalized forms are compared.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Optional

import rollserve.eval.scorers as scorers

logger = logging.getLogger("rollserve.eval")
VERIFY_TIMEOUT_S = 5  # math-verify's own limit for parsing and for comparing, each
WORKER_TIMEOUT_S = 30.0  # a worker answer slower than this is a hung worker

EXACT, SYMBOLIC = "exact", "math_verify"


@dataclass
class Verdict:
    extracted: Optional[str]  # the final answer found in the generation
    key: Optional[str]        # its normalized form (what majority voting counts)
    correct: bool
    how: Optional[str]        # "exact", "math_verify", or None when wrong


def have_math_verify() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def check(generation: str, gold) -> Verdict:
    """The verdict on one generation against the gold answer."""
    extracted = scorers.extract_final_answer(generation)
    key = scorers.normalize_math_answer(extracted)
    gold_key = scorers.normalize_math_answer(str(gold))
    if key is None:
        return Verdict(extracted, None, False, None)
    if key == gold_key:
        return Verdict(extracted, key, True, EXACT)
    if equivalent(extracted, str(gold)):
        return Verdict(extracted, key, True, SYMBOLIC)
    return Verdict(extracted, key, False, None)


def equivalent(prediction: str, gold: str) -> bool:
    """math-verify's equivalence of two final answers (False where it is not installed,
    cannot parse either side, or runs out of time)."""
    if not have_math_verify():
        return False
    if threading.current_thread() is threading.main_thread():
        return _verify_here(prediction, gold)
    return _WORKER.verify(prediction, gold)


def _verify_here(prediction: str, gold: str) -> bool:
    from math_verify import parse, verify

    try:
        # in $...$ so LaTeX answers ("\frac{1}{2}", "\sqrt{2}") parse as LaTeX
        gold_parsed = parse(f"${gold}$", parsing_timeout=VERIFY_TIMEOUT_S)
        pred_parsed = parse(f"${prediction}$", parsing_timeout=VERIFY_TIMEOUT_S)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=VERIFY_TIMEOUT_S))
    except Exception as e:  # math-verify's timeout, or a parser error on odd text
        logger.debug("math-verify gave up on %r vs %r: %s", prediction, gold, e)
        return False


class _Worker:
    """One spawned process that runs math-verify for threads other than the main one."""

    def __init__(self):
        self.lock = threading.Lock()
        self.pool: Optional[ProcessPoolExecutor] = None

    def verify(self, prediction: str, gold: str) -> bool:
        with self.lock:
            if self.pool is None:
                self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            pool = self.pool
        future = pool.submit(_verify_here, prediction, gold)
        try:
            return future.result(timeout=WORKER_TIMEOUT_S)
        except FutureTimeout:
            logger.warning("math-verify worker hung on %r vs %r; restarting it", prediction, gold)
            self._restart(pool)
            return False
        except Exception as e:  # the worker died (e.g. out of memory): a new one next time
            logger.warning("math-verify worker failed (%s); restarting it", e)
            self._restart(pool)
            return False

    def _restart(self, pool: ProcessPoolExecutor) -> None:
        with self.lock:
            if self.pool is pool:
                self.pool = None
        for process in list(getattr(pool, "_processes", {}).values()):
            process.kill()  # shutdown() alone would wait for the hung call
        pool.shutdown(wait=False, cancel_futures=True)


_WORKER = _Worker()
