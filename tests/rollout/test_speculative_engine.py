"""--speculative-algorithm NGRAM (default model) and EAGLE (a tiny model and head) through
rollserve.Engine: greedy outputs equal the non-speculative scheduler's, n > 1 works, results carry SGLang's spec_*
meta_info and the server info its average accept length."""

import pytest

import rollserve
from rollserve.core.tokenizer import load_tokenizer
from tests.scheduler.scheduler_harness import make_scheduler, request, run_all

pytestmark = pytest.mark.slow

# answers that copy their prompt, where NGRAM's drafts hold
ASKS = ["Repeat this sentence exactly, twice: The quick brown fox jumps over the lazy dog near "
        "the river bank.", "Copy this list: red, green, blue, yellow, purple, orange, pink, brown."]
PARAMS = {"temperature": 0, "max_new_tokens": 32}


def test_ngram_greedy_equals_plain_decoding(default_model_dir):
    tokenizer = load_tokenizer(default_model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                             add_generation_prompt=True) for ask in ASKS]
    with rollserve.Engine(max_total_tokens=8192, speculative_algorithm="NGRAM",
                          speculative_num_draft_tokens=5, log_level="warning") as engine:
        outs = engine.generate(prompts, PARAMS)
        several = engine.generate(prompts[0], {**PARAMS, "n": 2})
        info = engine.get_server_info()
    plain = make_scheduler(default_model_dir, max_total_tokens=8192)
    want = run_all(plain, [request(tokenizer.encode(p), rid=str(i), **PARAMS)
                           for i, p in enumerate(prompts)])
    for i, out in enumerate(outs):
        assert out["output_ids"] == want[str(i)].output_ids, ASKS[i]
        meta = out["meta_info"]
        assert meta["spec_verify_ct"] >= 1
        assert meta["spec_accept_length"] == pytest.approx(meta["completion_tokens"] / meta["spec_verify_ct"])
        assert 0 <= meta["spec_accept_token_num"] <= meta["spec_draft_token_num"]
    assert sum(o["meta_info"]["spec_accept_token_num"] for o in outs) > 5  # NGRAM pays here
    assert [o["output_ids"] for o in several] == [want["0"].output_ids] * 2
    assert info["internal_states"][0]["avg_spec_accept_length"] > 1.0


def test_eagle_head_through_the_engine(tiny_models, tmp_path):
    """--speculative-algorithm EAGLE with --speculative-draft-model-path reaches the scheduler
    process: greedy outputs equal plain decoding, and results carry the spec_* meta."""
    from tests.scheduler.draft_checkpoints import save_eagle_head

    head = save_eagle_head(tiny_models["llama"], str(tmp_path / "head"))
    assert_eagle_engine_decodes_as_plain(tiny_models["llama"], head, speculative_num_steps=3,
                                         speculative_num_draft_tokens=4)
    # tree drafts through the server's flags: 2 children per node, 3 levels, 5 nodes
    assert_eagle_engine_decodes_as_plain(tiny_models["llama"], head, speculative_num_steps=3,
                                         speculative_eagle_topk=2, speculative_num_draft_tokens=6)


def assert_eagle_engine_decodes_as_plain(model: str, head: str, params=PARAMS, **engine_args):
    """An Engine drafting with the EAGLE head `head` answers two greedy prompts as the plain
    in-process scheduler does, verifying drafts for each."""
    prompts = [[5, 6, 7, 8, 9] * 3, [40, 41, 42] * 4]
    with rollserve.Engine(model_path=model, max_total_tokens=2048, speculative_algorithm="EAGLE",
                          speculative_draft_model_path=head, log_level="warning",
                          **engine_args) as engine:
        outs = engine.generate(input_ids=prompts, sampling_params=params)
    want = run_all(make_scheduler(model, max_total_tokens=2048),
                   [request(p, rid=str(i), **params) for i, p in enumerate(prompts)])
    for i, out in enumerate(outs):
        assert out["output_ids"] == want[str(i)].output_ids
        assert out["meta_info"]["spec_verify_ct"] >= 1
