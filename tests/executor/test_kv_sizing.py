"""The KV pool on CPU is sized from the machine's total memory less the weights, not from
whatever happens to be free at start (issue #14: a host shared with a trainer); a draft
model's weights and KV come out of the same budget (issue #20)."""

import logging
import os

from rollserve.executor.config import DraftSpec, ExecutorConfig
from rollserve.executor.draft_runner import DraftRunner
from rollserve.executor.kv_pool import KVPool
from rollserve.executor.model_runner import ModelRunner
from tests.scheduler.draft_checkpoints import save_eagle_head

FRACTION = 0.0005  # small, so that the test allocates a few MB whatever the machine


def _runner(model_path: str, **fields) -> ModelRunner:
    return ModelRunner(ExecutorConfig(model_path=model_path, device="cpu", dtype="float32",
                                      context_length=64, mem_fraction_static=FRACTION, **fields))


def _params(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


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


def test_a_draft_models_weights_and_kv_fit_the_same_budget(tiny_models, tmp_path):
    path = tiny_models["llama"]
    head = save_eagle_head(path, str(tmp_path / "eagle"))
    draft = DraftSpec("EAGLE", head, num_drafts=3)
    plain, spec = _runner(path), _runner(path, draft=draft)
    m, d = spec.model, spec.draft_model
    per_token = KVPool.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, spec.dtype)
    draft_per_token = KVPool.bytes_per_token(1, *d.kv_layout(), spec.dtype)
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    budget = (total - _params(m) - _params(d)) * FRACTION  # the draft's weights counted too
    drafter = DraftRunner(spec, "EAGLE", head, draft.num_drafts)
    assert drafter.model is d  # the runner's, loaded before the pool was sized
    scratch = drafter.pool.num_slots - spec.max_total_tokens
    assert scratch == spec.max_running_requests * (draft.num_drafts - 1)
    tokens = spec.max_total_tokens
    assert tokens < plain.max_total_tokens  # fewer tokens with a draft model on
    used = tokens * per_token + (tokens + scratch) * draft_per_token
    assert used <= budget < used + per_token + draft_per_token
    assert spec.memory_usage()["weight"] >= round((_params(m) + _params(d)) / 2**30, 3)


def test_max_total_tokens_is_the_targets_count_with_a_draft_model(tiny_models, tmp_path):
    path = tiny_models["llama"]
    head = save_eagle_head(path, str(tmp_path / "eagle"))
    runner = _runner(path, max_total_tokens=300, max_running_requests=8,
                     draft=DraftSpec("EAGLE", head, num_drafts=4))
    assert runner.max_total_tokens == runner.allocator.num_slots == 300
    drafter = DraftRunner(runner, "EAGLE", head, 4)
    assert drafter.pool.num_slots == 300 + 8 * 3  # the draft's own slots on top, as given
