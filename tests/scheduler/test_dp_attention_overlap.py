"""--enable-dp-attention under the overlap scheduler (two gloo CPU ranks, a tiny random
Qwen3-MoE): the ranks keep one forward per step in lock-step while each launches step i+1
before processing step i, a rank with nothing to run passing idle through the MoE exchanges.
The greedy tokens are one rank's without overlap, through requests that end at different
steps, a penalised request (it drains the pipeline on its rank only), one request alone (the
other rank idle) and a weight update between batches. On CPU the overlap scheduler is forced
(ROLLSERVE_OVERLAP_ON_CPU): its steps do not run concurrently, every bookkeeping path does."""

from __future__ import annotations

import threading

import pytest

import rollserve
from tests.executor.moe_checkpoints import save_variant
from tests.scheduler.test_tp_sync import ENGINE_ARGS, PROMPTS

pytestmark = pytest.mark.multiprocess

PROMPTS_4 = PROMPTS + ["Water boils at"]
# different lengths: the ranks' requests end at different steps (one after its first token)
PARAMS = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in (9, 1, 5, 12)]
PARAMS[2] = dict(PARAMS[2], repetition_penalty=1.3)  # its rank drains before each of its steps
LONG = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}


def run(engine, prompts=PROMPTS_4, params=PARAMS):
    outs = engine.generate(prompts, params, return_logprob=True)
    return [(o["output_ids"], [lp[0] for lp in o["meta_info"]["output_token_logprobs"]])
            for o in outs]


def assert_same(got, want):
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, abs=1e-4)  # the MoE exchange adds in another order


@pytest.fixture(scope="module")
def models(tmp_path_factory, default_model_dir):
    out = []
    for seed in (0, 1):
        folder = str(tmp_path_factory.mktemp(f"qwen3_moe{seed}"))
        save_variant("qwen3_moe", folder, seed, tokenizer_dir=default_model_dir)
        out.append(folder)
    return out


@pytest.fixture(scope="module")
def reference(models):
    """One rank, the plain scheduler (no overlap on CPU): before and after the update."""
    with rollserve.Engine(model_path=models[0], **ENGINE_ARGS) as eng:
        before, alone = run(eng), run(eng, PROMPTS_4[3:], PARAMS[3:])
        assert eng.update_weights_from_disk(models[1])["success"]
        return before, alone, run(eng), run(eng, PROMPTS_4[:1], [LONG])


def update_mid_request(engine, path):
    """An update (in_flight_requests "wait", the default) sent while one request decodes on
    one rank, the other idle: every rank defers it until the replica is idle, then applies it
    at the same step. Returns (the update's answer, the request's tokens and logprobs)."""
    started, last = threading.Event(), {}

    def stream():
        for chunk in engine.generate(PROMPTS_4[0], LONG, stream=True, return_logprob=True):
            last["chunk"] = chunk
            if len(chunk["output_ids"]) >= 2:
                started.set()
        started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(timeout=60)
    answer = engine.update_weights_from_disk(path)
    thread.join(timeout=60)
    chunk = last["chunk"]
    return answer, (chunk["output_ids"], [lp[0] for lp in chunk["meta_info"]["output_token_logprobs"]])


@pytest.mark.parametrize("a2a,ep_size", [("none", 1), ("deepep", 2)])
def test_dp_attention_overlapped_answers_as_one_rank(models, reference, monkeypatch, a2a, ep_size):
    monkeypatch.setenv("ROLLSERVE_OVERLAP_ON_CPU", "1")  # the ranks' processes inherit it
    before, alone, after, long_after = reference
    with rollserve.Engine(model_path=models[0], tp_size=2, dp_size=2, enable_dp_attention=True,
                          ep_size=ep_size, moe_a2a_backend=a2a, dist_timeout=60,
                          **ENGINE_ARGS) as eng:  # a rank left waiting in an exchange fails in 60 s
        assert_same(run(eng), before)
        # one request: its rank runs it, the other passes idle through every exchange
        assert_same(run(eng, PROMPTS_4[3:], PARAMS[3:]), alone)
        assert eng.update_weights_from_disk(models[1])["success"]
        assert_same(run(eng), after)
        answer, streamed = update_mid_request(eng, models[0])
        assert answer["success"], answer
        assert len(streamed[0]) == LONG["max_new_tokens"]
        assert_same([streamed], long_after)  # the old weights to its end: the update waited
        assert_same(run(eng), before)
        info = eng.get_server_info()
    assert info["enable_dp_attention"] is True and info["num_running_reqs"] == 0
    assert info["disable_overlap_schedule"] is False
    # steps launched while the previous one was still unprocessed, summed over the ranks
    assert info["num_overlapped_steps"] > 0
