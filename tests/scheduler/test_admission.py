"""The new-token ratio's schedule and the per-request reserve."""

import pytest

from rollserve.core.sampling_params import SamplingParams
from rollserve.scheduler.admission import (CLIP_MAX_NEW_TOKENS, NEW_TOKEN_RATIO_DECAY_STEPS,
                                           NewTokenRatio, decode_reserve, expected_new_tokens)
from rollserve.scheduler.request import Req


def make_req(max_new=100, generated=0, **params):
    sp = SamplingParams(max_new_tokens=max_new, **params)
    sp.normalize_and_validate()
    req = Req(rid="r", input_ids=[1, 2, 3], sampling_params=sp)
    req.output_ids = [9] * generated
    return req


def test_ratio_decays_to_its_floor_and_jumps_back_on_retraction():
    ratio = NewTokenRatio(1.0)
    assert ratio.value == pytest.approx(0.7)
    for _ in range(NEW_TOKEN_RATIO_DECAY_STEPS // 2):
        ratio.decode_step()
    assert ratio.value == pytest.approx((0.7 + 0.14) / 2)
    for _ in range(NEW_TOKEN_RATIO_DECAY_STEPS):
        ratio.decode_step()
    assert ratio.value == pytest.approx(0.14)
    ratio.retracted([make_req(100, 10)])
    assert ratio.value == pytest.approx(0.7)  # (10 + 20) / 100 is below the initial ratio
    ratio.retracted([make_req(100, 90), make_req(100, 70)])
    assert ratio.value == pytest.approx(1.0)  # they run long: (160 + 40) / 200, capped at 1


def test_conservativeness_scales_the_ratio():
    assert NewTokenRatio(0.5).value == pytest.approx(0.35)
    assert NewTokenRatio(0.5).min == pytest.approx(0.07)
    assert NewTokenRatio(3.0).value == 1.0


def test_expected_new_tokens():
    assert expected_new_tokens(make_req(100, 20), 0.5) == 40
    # nothing can stop it early: all of the remaining tokens
    assert expected_new_tokens(make_req(100, 20, ignore_eos=True), 0.1) == 80
    assert expected_new_tokens(make_req(100, 20, ignore_eos=True, stop=["x"]), 0.1) == 8
    # min_new_tokens are certain
    assert expected_new_tokens(make_req(100, 20, min_new_tokens=90), 0.1) == 70
    assert expected_new_tokens(make_req(10 ** 6, 0), 1.0) == CLIP_MAX_NEW_TOKENS
    assert decode_reserve([make_req(100, 20), make_req(10, 10)], 0.5) == 40
