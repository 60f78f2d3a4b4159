"""MoE / MLA models through the real scheduler and model runner: greedy tokens and logprobs
equal to transformers' (float32) with chunked prefill and radix-cache reuse, latent cache and
--disable-mla alike."""

import pytest
import torch

from rollserve.executor.mla_kv_pool import MLAKVPool
from rollserve.executor.routed_experts import decode_routed_experts
from tests.executor.test_routed_experts import _transformers_choices
from tests.executor.moe_checkpoints import save_variant
from tests.scheduler.scheduler_harness import hf_greedy, make_scheduler, request, run_all


@pytest.fixture(scope="module")
def moe_models(tmp_path_factory, default_model_dir):
    out = {}
    for seed, variant in enumerate(("deepseek_v3", "qwen3_moe")):
        folder = str(tmp_path_factory.mktemp(variant))
        out[variant] = (folder, save_variant(variant, folder, seed, tokenizer_dir=default_model_dir))
    return out


def _prompts(vocab, seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("variant,disable_mla", [("deepseek_v3", False), ("deepseek_v3", True),
                                                 ("qwen3_moe", False)])
def test_greedy_and_logprobs_with_chunked_prefill_and_radix_cache(moe_models, variant, disable_mla):
    folder, hf_model = moe_models[variant]
    scheduler = make_scheduler(folder, chunked_prefill_size=5, disable_mla=disable_mla)
    if variant == "deepseek_v3":  # the latent pool unless --disable-mla
        assert isinstance(scheduler.runner.kv_pool, MLAKVPool) != disable_mla
    vocab = hf_model.config.vocab_size
    prompts = _prompts(vocab, 7, [12, 3, 9])
    msgs = [request(p, max_new_tokens=6, temperature=0, ignore_eos=True, return_logprob=True,
                    logprob_start_len=0) for p in prompts]
    results = run_all(scheduler, msgs)
    for msg in msgs:
        got = results[msg.rid]
        assert got.output_ids == hf_greedy(hf_model, msg.input_ids, 6)
        full = msg.input_ids + got.output_ids
        with torch.no_grad():
            ref = torch.log_softmax(hf_model(torch.tensor([full])).logits[0].double(), -1)
        n = len(msg.input_ids)
        expected_in = [ref[i - 1, full[i]].item() for i in range(1, n)]
        expected_out = [ref[n - 1 + j, t].item() for j, t in enumerate(got.output_ids)]
        assert max(abs(a - b) for (a, _), b in zip(got.input_logprobs[1:], expected_in)) < 1e-5
        assert max(abs(a - b) for (a, _), b in zip(got.output_logprobs, expected_out)) < 1e-5
    # the same first prompt again: its prefix comes from the radix cache, same tokens
    again = [request(prompts[0], max_new_tokens=6, temperature=0, ignore_eos=True)]
    second = run_all(scheduler, again)[again[0].rid]
    assert second.cached_tokens >= len(prompts[0]) - 1
    assert second.output_ids == results[msgs[0].rid].output_ids


def test_expert_distribution_counts_every_routed_token(moe_models, tmp_path):
    """Counts over the window sum to forwarded tokens x top-k x MoE layers; dense layers count
    nothing; the dump file holds what the call returns."""
    folder, hf_model = moe_models["deepseek_v3"]
    scheduler = make_scheduler(folder, chunked_prefill_size=6)
    recorder = scheduler.runner.expert_recorder
    config = hf_model.config
    run_all(scheduler, [request([5, 6, 7], max_new_tokens=2, temperature=0, ignore_eos=True)])
    assert recorder.start()["success"]
    prompts = _prompts(config.vocab_size, 3, [11, 4])
    msgs = [request(p, max_new_tokens=5, temperature=0, ignore_eos=True) for p in prompts]
    run_all(scheduler, msgs)
    recorder.stop()
    run_all(scheduler, [request([5, 6, 8], max_new_tokens=2, temperature=0, ignore_eos=True)])
    dump = recorder.dump(str(tmp_path))
    counts = torch.tensor(dump["logical_count"])
    forwarded = sum(len(p) + 5 - 1 for p in prompts)  # the last sampled token is not forwarded
    moe_layers = config.num_hidden_layers - config.first_k_dense_replace
    assert counts.shape == (config.num_hidden_layers, config.n_routed_experts)
    assert counts[:config.first_k_dense_replace].sum() == 0
    assert int(counts.sum()) == forwarded * config.num_experts_per_tok * moe_layers
    assert (counts[config.first_k_dense_replace:].sum(-1) == forwarded * 2).all()
    saved = torch.load(dump["path"])
    assert torch.equal(saved["logical_count"], counts)


def test_routed_experts_cover_every_forwarded_token(moe_models):
    """--enable-return-routed-experts: [start, seq_len - 1) rows equal transformers' router
    choices on the whole sequence, also for a prefix served from the radix cache (its rows were
    written when it was first computed) and across chunked prefill; dense layers -1."""
    folder, hf_model = moe_models["deepseek_v3"]
    scheduler = make_scheduler(folder, chunked_prefill_size=5, enable_return_routed_experts=True)
    store = scheduler.runner.routed_experts
    prompt = _prompts(hf_model.config.vocab_size, 5, [11])[0]
    first = request(prompt, max_new_tokens=4, temperature=0, ignore_eos=True,
                    return_routed_experts=True)
    plain = request(prompt[:6], max_new_tokens=2, temperature=0, ignore_eos=True)  # asks nothing
    out = run_all(scheduler, [first, plain])
    assert out[plain.rid].routed_experts is None
    second = request(prompt + [9], max_new_tokens=3, temperature=0, ignore_eos=True,
                     return_routed_experts=True, routed_experts_start_len=2)
    again = run_all(scheduler, [second])[second.rid]
    assert again.cached_tokens >= len(prompt) - 1
    for msg, got, start in ((first, out[first.rid], 0), (second, again, 2)):
        full = msg.input_ids + got.output_ids
        rows = decode_routed_experts(got.routed_experts, store.num_layers, store.top_k)
        assert rows.shape == (len(full) - 1 - start, store.num_layers, store.top_k)
        expected = _transformers_choices(hf_model, full[:-1])[start:]
        dense = [layer for layer in range(store.num_layers) if layer not in store.moe_layers]
        assert (rows[:, dense] == -1).all()
        assert torch.equal(torch.from_numpy(rows[:, store.moe_layers].copy()).sort(-1).values,
                           expected.sort(-1).values.to(torch.int32))
