"""MoE models over tensor-parallel ranks (gloo on CPU): each expert's rows split (--ep-size 1)
or whole experts split (--ep-size 2, expert parallel) answer as one rank does, load and
update weights on every rank, and gather an expert's tensor from the rank that holds it.
Tiny random Qwen3-MoE (6 experts, a dense layer), Mixtral (4 experts) and DeepSeek-V3 (MLA,
8 experts in grouped routing, a shared expert, a dense first layer) checkpoints."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from safetensors.torch import load_file

import rollserve
from tests.executor.moe_checkpoints import save_variant
# the dense TP tests' prompts, greedy settings and engine arguments
from tests.scheduler.test_tp_sync import ENGINE_ARGS, GREEDY, PROMPTS, greedy

pytestmark = pytest.mark.multiprocess

def assert_same(got, want):
    assert got[0] == want[0]
    for a, b in zip(got[1], want[1]):
        assert a == pytest.approx(b, abs=1e-4)  # the all-reduce adds in another order


@pytest.fixture(scope="module")
def models(tmp_path_factory, default_model_dir):
    out = {}
    for variant, seeds in (("qwen3_moe", (0, 1)), ("mixtral", (2,)), ("deepseek_v3", (3,))):
        for seed in seeds:
            folder = str(tmp_path_factory.mktemp(f"{variant}{seed}"))
            save_variant(variant, folder, seed, tokenizer_dir=default_model_dir)
            out[f"{variant}{seed}"] = folder
    return out


@pytest.fixture(scope="module")
def reference(models):
    out = {}
    for name, folder in models.items():
        with rollserve.Engine(model_path=folder, **ENGINE_ARGS) as eng:
            out[name] = greedy(eng)
    return out


@pytest.mark.parametrize("ep_size", [1, 2])
def test_qwen3_moe_tp2_answers_as_one_rank_and_updates_weights(models, reference, ep_size):
    with rollserve.Engine(model_path=models["qwen3_moe0"], tp_size=2, ep_size=ep_size,
                          **ENGINE_ARGS) as eng:
        assert_same(greedy(eng), reference["qwen3_moe0"])
        assert eng.update_weights_from_disk(models["qwen3_moe1"])["success"]
        assert_same(greedy(eng), reference["qwen3_moe1"])
        # each expert's full tensor, gathered from its rank (experts 0-2 on rank 0, 3-5 on 1)
        state = load_file(os.path.join(models["qwen3_moe1"], "model.safetensors"))
        for name in ("model.layers.0.mlp.experts.1.gate_proj.weight",
                     "model.layers.0.mlp.experts.4.down_proj.weight",
                     "model.layers.2.mlp.experts.5.up_proj.weight",
                     "model.layers.0.mlp.gate.weight"):
            values = eng.get_weights_by_name(name, truncate_size=state[name].numel())
            assert values == pytest.approx(state[name].flatten().tolist(), abs=1e-6), name


def test_mixtral_expert_parallel_answers_as_one_rank(models, reference):
    with rollserve.Engine(model_path=models["mixtral2"], tp_size=2, enable_ep_moe=True,
                          **ENGINE_ARGS) as eng:
        assert_same(greedy(eng), reference["mixtral2"])
        info = eng.get_server_info()
        assert (info["tp_size"], info["ep_size"]) == (2, 2)


@pytest.mark.parametrize("ep_size,disable_mla", [(2, False), (1, True)])
def test_deepseek_v3_mla_heads_and_experts_split_over_ranks(models, reference, ep_size, disable_mla):
    """MLA under TP: each rank its heads' rows of q_b / kv_b and columns of o_proj, the same
    latent cached on every rank (or, --disable-mla, its heads' expanded K/V)."""
    with rollserve.Engine(model_path=models["deepseek_v33"], tp_size=2, ep_size=ep_size,
                          disable_mla=disable_mla, **ENGINE_ARGS) as eng:
        assert_same(greedy(eng), reference["deepseek_v33"])


# the all-gather path over whole experts (qwen3_moe, ep_size 2, none) differs from the one
# below only in the experts' kernel call, which test_qwen3_moe_tp2_... covers
@pytest.mark.parametrize("variant,ep_size,a2a", [("deepseek_v3", 1, "none"), ("qwen3_moe", 2, "deepep"),
                                                 ("deepseek_v3", 2, "deepep")])
def test_dp_attention_ranks_run_their_own_requests(models, reference, monkeypatch, variant,
                                                  ep_size, a2a):
    """--enable-dp-attention: each rank keeps some of the requests (whole attention, its own
    KV) and the MoE blocks exchange the ranks' tokens (all-gather + all-reduce, or with
    --moe-a2a-backend deepep each (token, expert) copy sent to its expert's rank and back);
    one request alone leaves the other rank idle, which must still take part in every
    exchange, and its decode steps route one token to top-k experts, so most experts (and
    at times a whole rank's) receive none. The all-to-all cases run under the overlap
    scheduler (forced on CPU), the all-gather one under the plain scheduler."""
    overlap = a2a == "deepep"
    if overlap:
        monkeypatch.setenv("ROLLSERVE_OVERLAP_ON_CPU", "1")  # the ranks' processes inherit it
    name = f"{variant}{0 if variant == 'qwen3_moe' else 3}"
    with rollserve.Engine(model_path=models[name], tp_size=2, dp_size=2, enable_dp_attention=True,
                          ep_size=ep_size, moe_a2a_backend=a2a, **ENGINE_ARGS) as eng:
        assert_same(greedy(eng), reference[name])
        one = eng.generate(PROMPTS[0], GREEDY)
        assert one["output_ids"] == reference[name][0][0]
        if variant == "qwen3_moe":
            assert eng.update_weights_from_disk(models["qwen3_moe1"])["success"]
            assert_same(greedy(eng), reference["qwen3_moe1"])
        info = eng.get_server_info()
        assert info["enable_dp_attention"] is True and info["num_running_reqs"] == 0
        assert info["moe_a2a_backend"] == a2a
        assert (info.get("num_overlapped_steps", 0) > 0) == overlap


def outputs(outs):
    return [o["output_ids"] for o in outs], [[lp[0] for lp in o["meta_info"]["output_token_logprobs"]]
                                             for o in outs]


def call_mid_request(engine, call, **generate):
    """call() sent while one request (engine.generate(**generate)) streams, its rank decoding
    and the other idle. Returns call's answer and the request's last chunk."""
    started, last = threading.Event(), {}

    def stream():
        for chunk in engine.generate(stream=True, **generate):
            last["chunk"] = chunk
            if len(chunk["output_ids"]) >= 2:
                started.set()
        started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(timeout=60)
    answer = call()
    thread.join(timeout=60)
    return answer, last["chunk"]


def update_mid_request(engine, path):
    """An update (in_flight_requests "wait", the default) sent while one request decodes on
    one rank, the other idle: every rank defers it until the replica is idle, then all apply
    it at the same step. Returns the update's answer and the request's last chunk."""
    return call_mid_request(engine, lambda: engine.update_weights_from_disk(path),
                            prompt=PROMPTS[0], sampling_params=GREEDY, return_logprob=True)


def test_dp_attention_under_the_overlap_scheduler(models, reference, monkeypatch):
    """--enable-dp-attention under the overlap scheduler (the default, as in SGLang; forced on
    CPU, where its steps do not run concurrently but every bookkeeping path does): each rank
    launches step i+1 before processing step i and the ranks keep one forward per step, a
    rank with nothing to launch passing idle through the exchanges. Greedy tokens are one
    rank's without overlap, through requests that end at different steps (one after its first
    token, leaving its rank idle), a seeded one (its rank drains before each of its steps, the
    other does not) and an update sent mid-request, which every rank defers alike."""
    monkeypatch.setenv("ROLLSERVE_OVERLAP_ON_CPU", "1")  # the ranks' processes inherit it
    ids, logprobs = reference["qwen3_moe0"]
    lengths = (9, 1, 5)  # greedy and ignore_eos: each is a prefix of the 12-token answer
    params = [dict(GREEDY, max_new_tokens=n) for n in lengths]
    params[2]["seed"] = 7  # still greedy, but output-dependent (overlap_scheduler.py)
    with rollserve.Engine(model_path=models["qwen3_moe0"], tp_size=2, dp_size=2,
                          enable_dp_attention=True, dist_timeout=60,  # a stranded rank fails
                          **ENGINE_ARGS) as eng:
        got = outputs(eng.generate(PROMPTS, params, return_logprob=True))
        assert_same(got, ([i[:n] for i, n in zip(ids, lengths)],
                          [lp[:n] for lp, n in zip(logprobs, lengths)]))
        answer, streamed = update_mid_request(eng, models["qwen3_moe1"])
        assert answer["success"], answer
        assert_same(outputs([streamed]), (ids[:1], logprobs[:1]))  # the old weights to its end
        assert_same(greedy(eng), reference["qwen3_moe1"])
        info = eng.get_server_info()
    assert info["disable_overlap_schedule"] is False and info["num_running_reqs"] == 0
    assert info["num_overlapped_steps"] > 0  # launched before the previous step was processed


def test_ep_size_must_match_tp_size(models):
    with pytest.raises(ValueError, match="ep_size"):
        rollserve.Engine(model_path=models["mixtral2"], tp_size=2, ep_size=3, **ENGINE_ARGS)


def test_experts_split_whole_and_by_rows():
    """The layout itself: which experts and rows a rank holds, ids of other ranks' experts."""
    from rollserve.executor.layers.moe_parallel import expert_layout
    from rollserve.executor.parallel_state import as_rank

    with as_rank(1, 2, ep_size=2):
        ep = expert_layout(6, 32)
    assert (ep.first_local, ep.num_local, ep.inter_local) == (3, 3, 32)
    ids = torch.tensor([[0, 3], [5, 2]])
    assert ep.local_ids(ids).tolist() == [[3, 0], [2, 3]]  # 3 = "not on this rank"
    with as_rank(1, 2):
        tp = expert_layout(6, 32)
    assert (tp.num_local, tp.inter_start, tp.inter_local) == (6, 16, 16)
    assert tp.local_ids(ids).tolist() == ids.tolist()


def test_convert_n_experts_cuts_whole_experts_per_rank(models, reference, tmp_path):
    """rollserve convert --n-experts: each rank's file holds its experts whole (and nothing of
    the others'); served with --ep-size 2 from those files it answers as the HF folder."""
    import subprocess
    import sys

    from safetensors import safe_open

    from rollserve.executor.sharded_state import iterate_rank_file

    def convert(out, *extra):
        return subprocess.run([sys.executable, "-m", "rollserve.cli", "convert", "--hf-ckpt-path",
                               models["qwen3_moe0"], "--save-path", out, "--model-parallel", "2",
                               *extra], capture_output=True, text=True, timeout=300)

    out = str(tmp_path / "ep2")
    done = convert(out, "--n-experts", "6")
    assert done.returncode == 0, done.stderr
    with safe_open(os.path.join(out, "model-rank-1-part-0.safetensors"), "pt") as f:
        shape = lambda name: tuple(f.get_slice(f"model.layers.0.mlp.experts.{name}").get_shape())
        assert shape("4.gate_proj.weight") == (32, 64)  # whole: rank 1 holds experts 3-5
        assert shape("1.gate_proj.weight")[0] == 0  # expert 1 lives on rank 0
    with pytest.raises(ValueError, match="converted for ep_size 2, not 1"):
        next(iterate_rank_file(out, 0, 2, 1))
    with rollserve.Engine(model_path=out, tp_size=2, ep_size=2, load_format="sharded_state",
                          **ENGINE_ARGS) as eng:
        assert_same(greedy(eng), reference["qwen3_moe0"])
    refused = convert(str(tmp_path / "bad"), "--n-experts", "5")
    assert refused.returncode != 0 and "has 6 routed experts, not 5" in refused.stderr
