"""A tensor-parallel replica end to end (scheduler/tp_sync.py): rollserve.Engine with
--tp-size 2 on CPU (gloo) answers exactly as --tp-size 1 does, keeps its ranks in step
through sampled requests, aborts and control calls, and updates weights on every rank or
on none. Tiny Llama: 4 query heads, 2 KV heads."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import rollserve
from tests.tiny_models import save_tiny_checkpoint

pytestmark = pytest.mark.multiprocess

PROMPTS = ["The three primary colors are", "def fibonacci(n):", "Once upon a time"]
GREEDY = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
ENGINE_ARGS = dict(max_total_tokens=4096, log_level="warning")


def greedy(engine):
    outs = engine.generate(PROMPTS, GREEDY, return_logprob=True)
    return ([o["output_ids"] for o in outs],
            [[lp[0] for lp in o["meta_info"]["output_token_logprobs"]] for o in outs])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, default_model_dir):
    root = tmp_path_factory.mktemp("tp_sync")
    a = save_tiny_checkpoint("llama", str(root / "a"), default_model_dir, seed=0)
    b = save_tiny_checkpoint("llama", str(root / "b"), default_model_dir, seed=1)
    bad = str(root / "bad")  # same names, one tensor of the wrong shape
    os.makedirs(bad)
    state = load_file(os.path.join(a, "model.safetensors"))
    state["model.layers.0.mlp.down_proj.weight"] = torch.zeros(64, 64)
    save_file(state, os.path.join(bad, "model.safetensors"))
    for name in os.listdir(a):
        if name.endswith(".json") and not name.startswith("model.safetensors"):
            with open(os.path.join(a, name)) as src, open(os.path.join(bad, name), "w") as dst:
                dst.write(src.read())
    return {"a": a, "b": b, "bad": bad}


@pytest.fixture(scope="module")
def reference(checkpoints):
    """What one rank answers on checkpoints a and b."""
    with rollserve.Engine(model_path=checkpoints["a"], **ENGINE_ARGS) as eng:
        on_a = greedy(eng)
        eng.update_weights_from_disk(checkpoints["b"])
        on_b = greedy(eng)
    return {"a": on_a, "b": on_b}


@pytest.fixture(scope="module")
def tp2(checkpoints, reference):
    with rollserve.Engine(model_path=checkpoints["a"], tp_size=2, **ENGINE_ARGS) as eng:
        yield eng


def assert_same(got, want):
    assert got[0] == want[0]
    for g, w in zip(got[1], want[1]):
        assert max(abs(x - y) for x, y in zip(g, w)) < 1e-5


def test_tp2_answers_as_one_rank(tp2, reference):
    assert_same(greedy(tp2), reference["a"])
    info = tp2.get_server_info()
    assert info["tp_size"] == 2 and info["dp_size"] == 1


def test_tp2_ranks_stay_in_step_through_sampling_aborts_and_control_calls(tp2, reference):
    sampled = tp2.generate(PROMPTS * 4, {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 16})
    assert all(len(o["output_ids"]) > 0 for o in sampled)
    seeded = [tp2.generate(PROMPTS[0], {"temperature": 1.0, "max_new_tokens": 8, "seed": 7})
              for _ in range(2)]
    assert seeded[0]["output_ids"] == seeded[1]["output_ids"]
    assert tp2.flush_cache()["success"]
    assert tp2.pause_generation()["success"] and tp2.continue_generation()["success"]
    assert tp2.release_memory_occupation()["success"]  # on every rank
    assert tp2.resume_memory_occupation()["success"]
    assert_same(greedy(tp2), reference["a"])  # still in step: the collectives still match


def test_tp2_weight_updates_reach_every_rank_or_none(tp2, checkpoints, reference):
    assert tp2.update_weights_from_disk(checkpoints["b"])["success"]
    assert_same(greedy(tp2), reference["b"])
    refused = tp2.update_weights_from_disk(checkpoints["bad"])
    assert not refused["success"] and "down_proj" in refused["message"]
    assert_same(greedy(tp2), reference["b"])  # every rank kept b
    # full tensors, sliced engine side
    full = load_file(os.path.join(checkpoints["a"], "model.safetensors"))
    result = tp2.update_weights_from_tensor(list(full.items()))
    assert result["success"], result
    assert_same(greedy(tp2), reference["a"])


def test_tp_size_the_model_cannot_split_fails_start_naming_it(checkpoints):
    with pytest.raises(RuntimeError, match="not divisible by tp_size 3"):
        rollserve.Engine(model_path=checkpoints["a"], tp_size=3, **ENGINE_ARGS)


def test_tp2_ranks_all_join_the_trainers_group(tp2, checkpoints, reference):
    """init_weights_update_group: the trainer is rank 0, TP ranks 1 and 2 (rank_offset 1);
    the replica generates while it waits for the trainer, to join and to broadcast; every rank
    receives the broadcast and keeps its slices."""
    import threading
    import time

    from rollserve.api.server import free_port
    from rollserve.weight_sync import distributed

    port, results = free_port(), {}

    def engine_side(key, call, *args):
        results[key] = call(*args)

    joining = threading.Thread(target=engine_side, args=(
        "init", tp2.init_weights_update_group, "127.0.0.1", port, 1, 3, "tp-sync", "gloo"))
    joining.start()
    # the ranks wait for the trainer beside generation, not in its way
    time.sleep(0.5)
    during, _ = greedy(tp2)
    assert joining.is_alive(), "the join answered before the trainer came"
    assert [len(ids) for ids in during] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
    group = distributed.init_custom_process_group("gloo", "127.0.0.1", port, 3, 0, "tp-sync")
    joining.join()
    assert results["init"]["success"], results["init"]
    probe = "model.layers.1.mlp.down_proj.weight"
    try:
        named = list(load_file(os.path.join(checkpoints["b"], "model.safetensors")).items())
        receiving = threading.Thread(target=engine_side, args=(
            "update", tp2.update_weights_from_distributed, [n for n, _ in named],
            [str(t.dtype) for _, t in named], [list(t.shape) for _, t in named], "tp-sync",
            True, "b-dist"))
        before = tp2.get_weights_by_name(probe, 8)
        receiving.start()
        # the trainer broadcasts late: both ranks generate meanwhile, on the old weights
        time.sleep(0.5)
        during, _ = greedy(tp2)
        assert receiving.is_alive(), "the update answered before the trainer broadcast"
        assert [len(ids) for ids in during] == [GREEDY["max_new_tokens"]] * len(PROMPTS)
        assert tp2.get_weights_by_name(probe, 8) == before
        time.sleep(2.0)
        distributed.broadcast_named_tensors(group, named, None)
        receiving.join()
        assert results["update"]["success"], results["update"]
    finally:
        assert distributed.destroy_group_with_engine(
            group, lambda: tp2.destroy_weights_update_group("tp-sync"))["success"]
    b = dict(named)
    assert tp2.get_weights_by_name(probe, 8) == pytest.approx(b[probe].flatten()[:8].tolist())
    assert tp2.get_server_info()["weight_version"] == "b-dist"
    assert_same(greedy(tp2), reference["b"])  # every rank applied it at the same step


def test_tp2_get_weights_by_name_gathers_the_whole_tensor(tp2, checkpoints):
    assert tp2.update_weights_from_disk(checkpoints["b"])["success"]
    b = load_file(os.path.join(checkpoints["b"], "model.safetensors"))
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.down_proj.weight",
                 "model.embed_tokens.weight", "model.norm.weight"):
        n = min(b[name].numel(), 1 << 20)  # the server returns at most 2**20 values
        values = tp2.get_weights_by_name(name, truncate_size=n)
        assert values == pytest.approx(b[name].flatten()[:n].tolist()), name
