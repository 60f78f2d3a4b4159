"""The KV pool on CPU is sized from the machine's total memory less the weights, not from
whatever happens to be free at start (issue #14: a host shared with a trainer)."""

import logging
import os

from rollserve.executor.config import ExecutorConfig
from rollserve.executor.kv_pool import KVPool
from rollserve.executor.model_runner import ModelRunner

FRACTION = 0.0005  # small, so that the test allocates a few MB whatever the machine


def _runner(model_path: str) -> ModelRunner:
    return ModelRunner(ExecutorConfig(model_path=model_path, device="cpu", dtype="float32",
                                      context_length=64, mem_fraction_static=FRACTION))


def test_cpu_pool_follows_total_memory_not_free(tiny_models, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    runner = _runner(tiny_models["llama"])
    m = runner.model
    per_token = KVPool.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, runner.dtype)
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert runner.max_total_tokens == int((total - weights) * FRACTION // per_token)
    assert "total memory" in caplog.text and "weights" in caplog.text

    real = os.sysconf
    # the same machine with almost nothing free (a trainer took it): same pool, and a warning
    monkeypatch.setattr(os, "sysconf", lambda name: 1 if name == "SC_AVPHYS_PAGES" else real(name))
    caplog.clear()
    loaded = _runner(tiny_models["llama"])
    assert loaded.max_total_tokens == runner.max_total_tokens
    assert "larger than the free memory" in caplog.text
