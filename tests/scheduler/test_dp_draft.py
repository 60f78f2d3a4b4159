"""Speculative decoding under DP attention (--enable-dp-attention, gloo on CPU, the server's
path): each rank drafts for its own requests. NEXTN's MTP layer holds an MoE block whose
exchange every rank enters in lock-step (executor/draft_lockstep.py), EAGLE's dense head runs
on each rank alone, NGRAM drafts from each rank's own context. At TP 2 greedy answers equal
one rank's without speculation: requests of different lengths (one rank runs out of work
first, and of chain steps), then one request alone (the other rank idle throughout); no
request runs and the pool is free when idle (the replica's info: every rank's request
counts, rank 0's pool)."""

from __future__ import annotations

import pytest

import rollserve
from tests.scheduler.draft_checkpoints import add_mtp_layer, save_eagle_head
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all
from tests.scheduler.test_tp_moe import call_mid_request

pytestmark = pytest.mark.multiprocess

PROMPTS = [[5, 6, 7, 8, 9] * 3, [40, 41, 42] * 4, [11, 12, 13, 14, 15, 16, 17], [7, 8, 9] * 2]
# owners alternate (dp_attention.owns): rank 0 the long ones, rank 1 the short ones
PARAMS = [{"temperature": 0, "max_new_tokens": n, "ignore_eos": True} for n in (12, 3, 9, 5)]


@pytest.fixture(scope="module")
def targets(tmp_path_factory, tiny_models, default_model_dir):
    from tests.executor.moe_checkpoints import save_variant

    root = tmp_path_factory.mktemp("dp_draft")
    deepseek = str(root / "deepseek")
    save_variant("deepseek_v3", deepseek, tokenizer_dir=default_model_dir)
    add_mtp_layer(deepseek)
    llama = tiny_models["llama"]
    return {"deepseek": deepseek, "llama": llama,
            "eagle": save_eagle_head(llama, str(root / "eagle"))}


def _plain(path):
    msgs = [request(p, rid=str(i), **s) for i, (p, s) in enumerate(zip(PROMPTS, PARAMS))]
    got = run_all(make_scheduler(path, max_total_tokens=2048), msgs)
    return [got[str(i)].output_ids for i in range(len(PROMPTS))]


@pytest.mark.parametrize("target,spec", [
    ("deepseek", {"speculative_algorithm": "NEXTN", "speculative_num_draft_tokens": 3}),
    # a tree: the catch-up and num_steps - 1 tree steps, as many on the idle rank
    # under the overlap scheduler (forced on CPU): the drafts of a step run when it settles
    ("deepseek", {"speculative_algorithm": "NEXTN", "speculative_num_draft_tokens": 4,
                  "overlap": True}),
    ("deepseek", {"speculative_algorithm": "NEXTN", "speculative_eagle_topk": 2,
                  "speculative_num_steps": 2, "speculative_num_draft_tokens": 4}),
    # a dense head has no exchange: each rank runs its own, here under the overlap scheduler
    ("llama", {"speculative_algorithm": "EAGLE", "speculative_num_draft_tokens": 3,
               "overlap": True}),
    ("deepseek", {"speculative_algorithm": "NGRAM", "speculative_num_draft_tokens": 4,
                  "speculative_ngram_max_bfs_breadth": 1})],
    ids=["nextn", "nextn-overlap", "nextn-tree", "eagle-overlap", "ngram"])
def test_dp_attention_drafts_answer_as_one_rank(targets, target, spec, monkeypatch):
    path = targets[target]
    spec = dict(spec)
    overlap = spec.pop("overlap", False)
    if overlap:
        monkeypatch.setenv("ROLLSERVE_OVERLAP_ON_CPU", "1")  # the ranks' processes inherit it
    if spec["speculative_algorithm"] == "EAGLE":
        spec["speculative_draft_model_path"] = targets["eagle"]
    want = _plain(path)
    with rollserve.Engine(model_path=path, tp_size=2, dp_size=2, enable_dp_attention=True,
                          max_total_tokens=2048, log_level="warning", dist_timeout=120,
                          **spec) as eng:
        outs = eng.generate(input_ids=PROMPTS, sampling_params=PARAMS)
        assert [o["output_ids"] for o in outs] == want
        assert sum(o["meta_info"]["spec_verify_ct"] for o in outs) > 0
        # one request alone: rank 0 drafts, rank 1 takes part in idle forwards only
        alone = eng.generate(input_ids=PROMPTS[0], sampling_params=PARAMS[0])
        assert alone["output_ids"] == want[0] and alone["meta_info"]["spec_verify_ct"] > 0
        if overlap:  # a control call drains every rank alike: the busy rank's step settles
            # an update from disk (the checkpoint's own, MTP layer included) sent mid-request:
            # every rank drains for it alike, then defers it until the replica is idle
            answer, last = call_mid_request(eng, lambda: eng.update_weights_from_disk(path),
                                            input_ids=PROMPTS[0], sampling_params=PARAMS[0])
            assert answer["success"], answer
            assert last["output_ids"] == want[0]
            assert eng.generate(input_ids=PROMPTS[0], sampling_params=PARAMS[0])[
                "output_ids"] == want[0]  # the reloaded MTP layer drafts on
        eng.flush_cache()
        info = eng.get_server_info()
        assert info["num_running_reqs"] == 0 and info["kv_used_tokens"] == 0
        assert (info.get("num_overlapped_steps", 0) > 0) == overlap
