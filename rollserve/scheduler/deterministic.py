"""Sampling in deterministic mode (--enable-deterministic-inference): a seed per request.

Unseeded requests normally draw from one generator the whole batch shares, so a token
depends on what else was sampled before it. In deterministic mode a request without a
seed gets one derived from --random-seed (0 if unset) and its sample index (the k of the
"rid-k" the front end gives the n samples of one request), so the same request gives the
same tokens whatever runs beside it, and the n samples of a request still differ. Draws
then come from the per-row generator the sampler reseeds from (seed, tokens so far)
(executor/sampler.py).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from rollserve.core.sampling_params import SamplingParams


def sample_index(rid: str) -> int:
    head, _, k = rid.rpartition("-")
    return int(k) if head and k.isdigit() else 0


def with_default_seed(params: SamplingParams, rid: str, base_seed: Optional[int]) -> SamplingParams:
    if params.seed is not None:
        return params
    return dataclasses.replace(params, seed=(base_seed or 0) * 1_000_003 + sample_index(rid))
