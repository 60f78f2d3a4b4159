"""Draft models under tensor parallelism (CPU, gloo): EAGLE, EAGLE3 and NEXTN at --tp-size 2,
each rank running the draft's layer split as the target's, answer greedy requests exactly as
one rank does without speculation, draft on every rank (rank 0's drafts), and leave every
rank's KV pool fully free when idle. Tiny configs, a few short requests."""

from __future__ import annotations

import pytest

from tests.scheduler.draft_checkpoints import add_mtp_layer, save_eagle3_head, save_eagle_head
from tests.scheduler.scheduler_harness import make_scheduler, run_all
from tests.scheduler.test_speculative import repetitive_requests
from tests.tp_ranks import run_on_ranks

pytestmark = pytest.mark.multiprocess


def _requests():
    return repetitive_requests(1)[:4]  # greedy; penalties, a stop id, logprobs


def _answers(results):
    return {rid: (r.output_ids, r.finished_reason, [v for v, _ in r.output_logprobs])
            for rid, r in results.items()}


def speculate(cases, tp_size=2):
    """On one rank: each (model, algorithm, head) through the server's path (ServerArgs, the
    runner loading the draft beside the target); per case (answers, verify steps, every
    (request, length, drafts) proposed, pool free, the runner's draft drafts, draft / target
    KV heads here)."""
    from rollserve.core.tokenizer import eos_token_ids, load_tokenizer
    from rollserve.executor.model_runner import ModelRunner
    from rollserve.frontend.server_args import ServerArgs
    from rollserve.scheduler.overlap_scheduler import make_scheduler as make_for_config

    out = []
    for path, algorithm, head in cases:
        args = ServerArgs(model_path=path, device="cpu", dtype="float32", max_total_tokens=2048,
                          tp_size=tp_size, speculative_algorithm=algorithm,
                          speculative_draft_model_path=head, speculative_num_draft_tokens=3)
        config = args.scheduler_config()
        runner = ModelRunner(config.executor)
        tokenizer = load_tokenizer(path)
        spec = make_for_config(config, runner, tokenizer, eos_token_ids(path, tokenizer))
        proposed, propose = [], spec.drafter.propose

        def recording(req, most, propose=propose, proposed=proposed):  # observes, changes nothing
            drafts = propose(req, most)
            proposed.append((req.rid, req.seq_len, list(drafts)))
            return drafts

        spec.drafter.propose = recording
        got = run_all(spec, _requests())
        spec.flush_cache()
        free = (spec.kv.allocator.available() == spec.kv.allocator.num_slots and
                spec.kv.req_pool.available() == runner.max_running_requests)
        stats = spec.stats.spec
        out.append((_answers(got), stats.verify_ct, proposed, free,
                    spec.drafter.draft.model is runner.draft_model,
                    (runner.draft_model.kv_layout()[0], runner.model.num_kv_heads)))
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory, tiny_models, default_model_dir):
    from tests.executor.moe_checkpoints import save_variant

    root = tmp_path_factory.mktemp("tp_draft")
    llama = tiny_models["llama"]  # 4 query heads, 2 KV heads: one KV head per rank
    deepseek = str(root / "deepseek")
    save_variant("deepseek_v3", deepseek, tokenizer_dir=default_model_dir)
    return [(llama, "EAGLE", save_eagle_head(llama, str(root / "eagle"))),
            (llama, "EAGLE3", save_eagle3_head(llama, str(root / "eagle3"))),
            (add_mtp_layer(deepseek), "NEXTN", None)]


def test_tp2_draft_models_answer_as_one_rank_without_speculation(cases):
    plain = {path: _answers(run_all(make_scheduler(path, max_total_tokens=2048), _requests()))
             for path, _, _ in cases}
    one_rank = speculate(cases, tp_size=1)
    ranks = run_on_ranks(speculate, 2, cases)
    for (path, algorithm, _), alone, *per_rank in zip(cases, one_rank, *ranks):
        for rank, (answers, verify_ct, proposed, free, preloaded, heads) in enumerate(per_rank):
            assert verify_ct > 0 and any(drafts for _, _, drafts in proposed), (algorithm, rank)
            assert free and preloaded, (algorithm, rank)
            # the split draft proposes what the whole one does, step by step
            assert proposed == alone[2], (algorithm, rank)
            if algorithm != "NEXTN":  # its MLA latent is whole on every rank
                assert heads == (1, 1) and alone[-1] == (2, 2)  # one of the 2 KV heads each
            assert answers.keys() == plain[path].keys()
            for rid, (ids, reason, logprobs) in answers.items():
                want_ids, want_reason, want_logprobs = plain[path][rid]
                assert (ids, reason) == (want_ids, want_reason), (algorithm, rank, rid)
                assert all(abs(a - b) < 1e-4 for a, b in zip(logprobs, want_logprobs))


def test_tp2_engine_drafts_with_an_eagle_head(tiny_models, tmp_path):
    """The server's path: rank 0 hands every rank its requests (scheduler/tp_sync.py) and each
    rank's draft runs in step, chains and trees; greedy answers equal one rank's without
    speculation."""
    from tests.rollout.test_speculative_engine import assert_eagle_engine_decodes_as_plain

    head = save_eagle_head(tiny_models["llama"], str(tmp_path / "head"))
    assert_eagle_engine_decodes_as_plain(
        tiny_models["llama"], head, {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True},
        tp_size=2, speculative_num_draft_tokens=3)
    # tree drafts at TP 2: both ranks grow rank 0's trees (draft_topk broadcasts them)
    assert_eagle_engine_decodes_as_plain(
        tiny_models["llama"], head, {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True},
        tp_size=2, speculative_eagle_topk=2, speculative_num_steps=2,
        speculative_num_draft_tokens=4)
