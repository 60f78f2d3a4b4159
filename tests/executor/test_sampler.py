import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import RepetitionPenaltyLogitsProcessor

from rollserve.executor.sampler import (Sampler, SamplingRow, TokenArrays, apply_penalties,
                                        compute_logprobs, gather_token_logprobs, top_logprobs)
from rollserve.kernels.sampling import TOP_P_CANDIDATES, filtered_probs
from rollserve.core.sampling_params import SamplingParams

CHI2_DF7_P001 = 24.32  # chi-square critical value, 7 degrees of freedom, p = 0.001
CHI2_DF2_P001 = 13.82

# every test runs on the CPU; on a CUDA machine each also runs on the GPU
DEVICES = ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]
on_devices = pytest.mark.parametrize("device", DEVICES)


def make_row(prompt=(), output=(), eos=(0,), **params) -> SamplingRow:
    sp = SamplingParams(**params)
    sp.normalize_and_validate()
    return SamplingRow(sp, list(prompt), list(output), frozenset(eos))


def randn(*shape, seed=0, scale=1.0, device="cpu"):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(device)


def reference_probs(logits_row, temperature=1.0, top_k=-1, top_p=1.0, min_p=0.0):
    """The filtering spec in plain float64 Python: top_k, then top_p over the
    renormalized survivors, then min_p relative to the top probability."""
    scaled = [x / temperature for x in logits_row]
    peak = max(scaled)
    weights = [math.exp(x - peak) for x in scaled]
    p = [w / sum(weights) for w in weights]
    order = sorted(range(len(p)), key=lambda t: -p[t])
    survivors = order[: top_k if top_k > 0 else len(p)]
    kept_mass = sum(p[t] for t in survivors)
    kept, mass = [], 0.0
    for t in survivors:
        if top_p < 1.0 and mass >= top_p * kept_mass:
            break
        kept.append(t)
        mass += p[t]
    final = [t for t in kept if p[t] >= min_p * p[order[0]]]
    total = sum(p[t] for t in final)
    return [p[t] / total if t in final else 0.0 for t in range(len(p))]


def chi_square(tokens, expected_probs):
    counts = Counter(tokens)
    n = len(tokens)
    return sum((counts.get(t, 0) - n * q) ** 2 / (n * q) for t, q in enumerate(expected_probs) if q > 0)


# ---- greedy -------------------------------------------------------------------------------

@on_devices
def test_greedy_rows_take_argmax(device):
    logits = randn(6, 50, device=device)
    rows = [make_row(temperature=0.0) for _ in range(6)]
    assert torch.equal(Sampler(50, device, base_seed=0).sample(logits, rows), logits.argmax(-1))


@on_devices
def test_top_k_one_is_greedy_even_with_temperature(device):
    logits = randn(4, 50, seed=1, device=device)
    sampler = Sampler(50, device, base_seed=0)
    for _ in range(10):
        rows = [make_row(temperature=1.5, top_k=1), make_row(temperature=2.0, top_k=1, seed=3),
                make_row(temperature=0.0), make_row(temperature=1.0, top_k=1, top_p=0.5)]
        assert torch.equal(sampler.sample(logits, rows), logits.argmax(-1))


@on_devices
def test_greedy_rows_mixed_with_sampled_rows_keep_argmax(device):
    logits = randn(8, 30, seed=2, device=device)
    rows = [make_row(temperature=0.0) if i % 2 else make_row(temperature=1.0) for i in range(8)]
    out = Sampler(30, device, base_seed=0).sample(logits, rows)
    assert torch.equal(out[1::2], logits[1::2].argmax(-1))
    assert out.dtype == torch.int64 and out.shape == (8,)


# ---- the distribution sampled -------------------------------------------------------------

LOGITS_8 = [1.0, 0.5, 0.0, -0.5, 2.0, 0.3, -1.0, 1.5]


@on_devices
def test_temperature_sampling_matches_softmax_frequencies(device):
    n = 20000
    logits = torch.tensor([LOGITS_8] * n, device=device)
    tokens = Sampler(8, device, base_seed=7).sample(logits, [make_row(temperature=0.7)] * n).tolist()
    assert chi_square(tokens, reference_probs(LOGITS_8, temperature=0.7)) < CHI2_DF7_P001


@on_devices
def test_seeded_rows_sample_from_the_softmax_too(device):
    n = 4000
    rows = [make_row(temperature=1.3, seed=s) for s in range(n)]
    tokens = Sampler(8, device, base_seed=0).sample(torch.tensor([LOGITS_8] * n, device=device), rows).tolist()
    assert chi_square(tokens, reference_probs(LOGITS_8, temperature=1.3)) < CHI2_DF7_P001


@on_devices
def test_filtered_sampling_matches_renormalized_distribution(device):
    params = dict(temperature=0.9, top_k=5, top_p=0.8)
    expected = reference_probs(LOGITS_8, **params)
    assert sum(q > 0 for q in expected) == 3  # 0.8 of the top-5 mass needs three tokens
    n = 12000
    tokens = Sampler(8, device, base_seed=3).sample(torch.tensor([LOGITS_8] * n, device=device),
                                                    [make_row(**params)] * n).tolist()
    assert set(tokens) == {t for t, q in enumerate(expected) if q > 0}
    assert chi_square(tokens, expected) < CHI2_DF2_P001


@on_devices
def test_partial_sort_path_matches_full_sort_path(device):
    logits = randn(6, 300, seed=14, scale=2.0, device=device)
    settings_ = [(5, 1.0), (40, 0.9), (17, 0.5)] * 2
    params = [make_row(top_k=k, top_p=p).params for k, p in settings_]
    partial = filtered_probs(logits, params)  # every row has a top_k: topk(40) instead of a sort
    full = filtered_probs(torch.cat([logits, logits[:1]]), params + [make_row(top_p=0.9).params])
    torch.testing.assert_close(partial, full[:6])
    expected = [reference_probs(logits[i].tolist(), top_k=k, top_p=p) for i, (k, p) in enumerate(settings_)]
    torch.testing.assert_close(partial.cpu(), torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-4)
    kept = [int((row > 0).sum()) for row in partial]
    assert kept[0] == 5 and max(kept) > 5  # rows past the narrowest top_k were not cut to it


@on_devices
def test_top_p_over_a_large_vocab_matches_the_spec_with_and_without_the_candidate_shortcut(device):
    vocab = TOP_P_CANDIDATES + 2000
    peaked = randn(3, vocab, seed=15, scale=6.0)
    flat = randn(1, vocab, seed=16, scale=0.2)
    wide_top_k = randn(1, vocab, seed=16, scale=1.5)  # its top 5000 hold clearly more than its top 4096
    settings_ = [dict(top_p=0.9), dict(top_p=0.5, top_k=100), dict(temperature=0.8)]
    head_mass = torch.softmax(peaked[0], -1).topk(TOP_P_CANDIDATES).values.sum()
    assert head_mass >= 0.9  # so the first call can take the top-4096 shortcut
    assert torch.softmax(flat[0], -1).topk(TOP_P_CANDIDATES).values.sum() < 0.99  # the second cannot
    # the top 4096 hold 0.95, falling gently; 2000 tokens share the last 0.05: top_p=0.9 fits
    # in the top 4096 but must still count the tail's mass
    head = torch.exp(-torch.arange(TOP_P_CANDIDATES) / 5000.0)
    designed = torch.cat([0.95 * head / head.sum(), torch.full((2000,), 0.05 / 2000)]).log()[None]
    for logits, last in ((torch.cat([peaked, designed]), dict(top_p=0.9)),
                         (torch.cat([peaked, flat]), dict(top_p=0.99)),
                         (torch.cat([peaked, wide_top_k]), dict(top_p=0.5, top_k=5000))):
        row_settings = settings_ + [last]
        got = filtered_probs(logits.to(device), [make_row(**kw).params for kw in row_settings]).cpu()
        expected = [reference_probs(logits[i].tolist(), **kw) for i, kw in enumerate(row_settings)]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=1e-4)
        assert int((got[2] > 0).sum()) == vocab  # the row that filters nothing kept every token


@on_devices
@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data())
def test_top_k_top_p_min_p_never_sample_outside_the_allowed_set(device, data):
    vocab = data.draw(st.integers(2, 40))
    scale = data.draw(st.floats(0.5, 6.0))
    param_sets = [dict(temperature=data.draw(st.floats(0.2, 2.0)),
                       top_k=data.draw(st.one_of(st.just(-1), st.integers(1, vocab))),
                       top_p=data.draw(st.floats(0.05, 1.0)),
                       min_p=data.draw(st.floats(0.0, 1.0)))
                  for _ in range(4)]
    logits = randn(16, vocab, seed=data.draw(st.integers(0, 2**31)), scale=scale, device=device)
    rows = [make_row(seed=(i if i % 3 == 0 else None), **param_sets[i % 4]) for i in range(16)]
    allowed = [reference_probs(logits[i].tolist(), **param_sets[i % 4]) for i in range(16)]
    sampled = [i for i in range(16) if not rows[i].params.is_greedy]
    if sampled:
        probs = filtered_probs(logits[sampled], [rows[i].params for i in sampled])
        assert torch.allclose(probs.cpu(), torch.tensor([allowed[i] for i in sampled]), atol=1e-5)
    sampler = Sampler(vocab, device, base_seed=data.draw(st.integers(0, 1000)))
    for step in range(6):
        for row in rows:
            row.output_ids = [0] * step  # a new draw for the seeded rows too
        tokens = sampler.sample(logits, rows).tolist()
        for i, token in enumerate(tokens):
            assert allowed[i][token] > 0, (i, token, param_sets[i % 4])


# ---- penalties ----------------------------------------------------------------------------

@on_devices
def test_frequency_and_presence_penalties_follow_the_openai_formula(device):
    logits = randn(3, 10, seed=4, device=device)
    rows = [make_row(prompt=[5, 7, 9], output=[3, 3, 5, 3], frequency_penalty=0.5, presence_penalty=0.25),
            make_row(prompt=[1], output=[1, 2], presence_penalty=-1.0),
            make_row(prompt=[4], output=[4, 4], frequency_penalty=1.5)]
    expected = logits.clone()
    for i, row in enumerate(rows):
        for token, count in Counter(row.output_ids).items():
            expected[i, token] -= row.params.frequency_penalty * count + row.params.presence_penalty
    torch.testing.assert_close(apply_penalties(logits, rows), expected)


@on_devices
@pytest.mark.parametrize("penalty", [1.3, 0.6, 2.0])
def test_repetition_penalty_matches_transformers(device, penalty):
    logits = randn(3, 40, seed=5, scale=3.0)
    rows = [make_row(prompt=[1, 2, 3, 2], output=[10, 11, 1], repetition_penalty=penalty),
            make_row(prompt=[30, 31], output=[], repetition_penalty=penalty),
            make_row(prompt=[1, 2, 3], output=[4], repetition_penalty=1.0)]
    got = apply_penalties(logits.to(device), rows).cpu()
    hf = RepetitionPenaltyLogitsProcessor(penalty)
    for i, row in enumerate(rows[:2]):
        input_ids = torch.tensor([row.prompt_ids + row.output_ids])
        torch.testing.assert_close(got[i:i + 1], hf(input_ids, logits[i:i + 1].clone()))
    assert torch.equal(got[2], logits[2])
    assert not torch.equal(got[0], logits[0])


@on_devices
def test_penalties_apply_in_order_bias_repetition_frequency(device):
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]], device=device)
    row = make_row(prompt=[0], output=[1, 1, 3], logit_bias={"1": 4.0, "2": -0.5},
                   repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.1)
    expected = torch.tensor([[2.0 / 2,                           # prompt token: repetition only
                              (-1.0 + 4.0) / 2 - 0.5 * 2 - 0.1,  # bias makes it positive, then divide
                              0.5 - 0.5,                         # bias only (not seen)
                              3.0 / 2 - 0.5 - 0.1]], device=device)
    torch.testing.assert_close(apply_penalties(logits, [row]), expected)


@on_devices
def test_penalties_steer_the_greedy_choice(device):
    logits = torch.tensor([[0.0, 3.0, 2.5, 1.0]], device=device)
    sampler = Sampler(4, device, base_seed=0)
    assert sampler.sample(logits, [make_row(temperature=0.0, output=[1])]).item() == 1
    assert sampler.sample(logits, [make_row(temperature=0.0, output=[1], presence_penalty=1.0)]).item() == 2
    assert sampler.sample(logits, [make_row(temperature=0.0, prompt=[1], repetition_penalty=1.5)]).item() == 2


@on_devices
def test_token_ids_past_the_vocab_are_ignored(device):
    logits = randn(1, 10, seed=18, device=device)  # e.g. an embedding wider than the lm_head
    messy = make_row(prompt=[1, 12, 3], output=[2, 15], repetition_penalty=1.5, frequency_penalty=0.5,
                     min_new_tokens=5, stop_token_ids=[4, 99], eos=(0, 50))
    clean = make_row(prompt=[1, 3], output=[2], repetition_penalty=1.5, frequency_penalty=0.5,
                     min_new_tokens=5, stop_token_ids=[4], eos=(0,))
    torch.testing.assert_close(apply_penalties(logits, [messy]), apply_penalties(logits, [clean]))


def test_no_penalties_returns_the_logits_untouched():
    logits = randn(2, 10)
    assert apply_penalties(logits, [make_row(), make_row(output=[1, 2])]) is logits


@on_devices
def test_sample_does_not_modify_its_input(device):
    logits = randn(2, 10, seed=6, device=device)
    before = logits.clone()
    rows = [make_row(output=[1, 2], repetition_penalty=1.5, logit_bias={3: 5.0}), make_row(min_new_tokens=4)]
    Sampler(10, device, base_seed=0).sample(logits, rows)
    assert torch.equal(logits, before)


def test_token_arrays_reuse_growing_lists_and_notice_rewritten_ones():
    arrays = TokenArrays()
    prompt, output = [5, 6, 7], [1]
    first_prompt = arrays(prompt)
    for step in range(4):
        arrays.end_step()
        output.append(step)
        assert arrays(prompt) is first_prompt  # unchanged: no new conversion
        assert arrays(output).tolist() == output
    del output[3:]  # shrunk
    assert arrays(output).tolist() == [1, 0, 1]
    arrays.end_step()
    output[:] = [8, 8, 8, 8]  # rewritten in place and longer
    assert arrays(output).tolist() == [8, 8, 8, 8]
    arrays.end_step()
    assert len(arrays) == 1  # the prompt was not used in the last step, so it was dropped


@on_devices
def test_penalties_stay_exact_while_outputs_grow_across_steps(device):
    sampler = Sampler(50, device, base_seed=0)
    logits = randn(3, 50, seed=17, scale=2.0, device=device)
    rows = [make_row(prompt=[1, 2, 3], output=[], repetition_penalty=1.4, frequency_penalty=0.3),
            make_row(prompt=[4], output=[], presence_penalty=0.7, seed=3),
            make_row(prompt=[5, 6], output=[], temperature=0.0)]
    for step in range(12):
        expected = apply_penalties(logits, rows)  # converted from scratch
        torch.testing.assert_close(apply_penalties(logits, rows, sampler.token_arrays), expected)
        for row, token in zip(rows, sampler.sample(logits, rows).tolist()):
            row.output_ids.append(token)
        # kept for the next step: row 0's prompt and output, row 1's output once it has one
        assert len(sampler.token_arrays) == (2 if step == 0 else 3)
    assert all(len(row.output_ids) == 12 for row in rows)


# ---- min_new_tokens and logit_bias -----------------------------------------------------------

@on_devices
def test_min_new_tokens_blocks_eos_and_stop_ids_then_releases_them(device):
    logits = torch.tensor([[10.0, 9.0, 8.0, 0.0, 1.0, 0.5]], device=device)
    sampler = Sampler(6, device, base_seed=0)
    params = dict(min_new_tokens=3, stop_token_ids=[1], max_new_tokens=10)
    for produced in range(3):
        greedy = make_row(output=[5] * produced, eos=(0, 2), temperature=0.0, **params)
        assert sampler.sample(logits, [greedy]).item() == 4  # 0, 1 and 2 all blocked
        sampled = [make_row(output=[5] * produced, eos=(0, 2), seed=s, **params) for s in range(200)]
        assert not set(sampler.sample(logits.expand(200, -1), sampled).tolist()) & {0, 1, 2}
    released = make_row(output=[5] * 3, eos=(0, 2), temperature=0.0, **params)
    assert sampler.sample(logits, [released]).item() == 0


@on_devices
def test_logit_bias_forces_and_forbids_tokens(device):
    logits = randn(64, 20, seed=8, device=device)
    sampler = Sampler(20, device, base_seed=0)
    forced = [make_row(logit_bias={7: 100.0}, temperature=1.0, seed=s) for s in range(32)]
    forced += [make_row(logit_bias={"7": 100.0}, temperature=t) for t in (0.0, 0.5) for _ in range(16)]
    assert sampler.sample(logits, forced).tolist() == [7] * 64
    best = logits[0].argmax().item()
    forbidden = make_row(logit_bias={best: -100.0, 10**6: 5.0}, temperature=0.0)  # out-of-vocab id is ignored
    assert sampler.sample(logits[:1], [forbidden]).item() == logits[0].topk(2).indices[1].item()


# ---- seeds --------------------------------------------------------------------------------

def random_other_row(gen: torch.Generator, index: int) -> SamplingRow:
    pick = torch.randint(0, 4, (), generator=gen).item()
    output = torch.randint(0, 500, (int(torch.randint(0, 6, (), generator=gen)),), generator=gen).tolist()
    if pick == 0:
        return make_row(output=output, temperature=0.0)
    if pick == 1:
        return make_row(output=output, seed=int(torch.randint(0, 10**6, (), generator=gen)), top_p=0.9)
    if pick == 2:
        return make_row(output=output, top_k=50, repetition_penalty=1.2, prompt=[index, 3])
    return make_row(output=output, temperature=0.8, min_p=0.05, frequency_penalty=0.3)


@on_devices
def test_seeded_row_gives_the_same_token_whatever_the_batch(device):
    vocab = 500
    gen = torch.Generator().manual_seed(11)
    placements = [(1, 0), (3, 0), (3, 2), (8, 5), (8, 7)]
    reference_tokens = set()
    for seed in (0, 1, 42, 2**40 + 3, -5):
        for step in (0, 3):
            target = make_row(prompt=[1, 2], output=[9] * step, seed=seed, temperature=1.1, top_p=0.97)
            target_logits = randn(vocab, seed=abs(seed) % 1000, scale=0.5)
            expected = Sampler(vocab, device, base_seed=0).sample(target_logits[None].to(device), [target]).item()
            reference_tokens.add(expected)
            for size, position in placements:
                logits = torch.randn(size, vocab, generator=gen) * 2
                logits[position] = target_logits
                rows = [random_other_row(gen, i) for i in range(size)]
                rows[position] = target
                sampler = Sampler(vocab, device, base_seed=size * 100 + position)
                token = sampler.sample(logits.to(device), rows)[position].item()
                assert token == expected, (seed, step, size, position)
    assert len(reference_tokens) > 5  # the draws were random, not a forced choice


@on_devices
def test_different_seeds_and_steps_give_different_draws(device):
    vocab = 1000
    logits = torch.zeros(40, vocab, device=device)  # uniform: every token equally likely
    sampler = Sampler(vocab, device, base_seed=0)
    by_seed = sampler.sample(logits, [make_row(seed=s) for s in range(40)]).tolist()
    assert len(set(by_seed)) > 30
    by_step = sampler.sample(logits, [make_row(seed=5, output=[1] * k) for k in range(40)]).tolist()
    assert len(set(by_step)) > 30
    twice = sampler.sample(logits[:2], [make_row(seed=5, output=[2, 3]), make_row(seed=5, output=[7, 8])])
    assert twice[0] == twice[1]  # the draw depends on (seed, step) only


@on_devices
def test_base_seed_makes_unseeded_sampling_reproducible(device):
    logits = randn(16, 100, seed=9, device=device)
    rows = [make_row(temperature=1.0) for _ in range(16)]
    first = [Sampler(100, device, base_seed=123).sample(logits, rows) for _ in range(2)]
    assert torch.equal(first[0], first[1])
    other = Sampler(100, device, base_seed=124).sample(logits, rows)
    assert not torch.equal(first[0], other)


@on_devices
def test_padded_logit_columns_are_never_sampled(device):
    logits = torch.cat([randn(8, 30, seed=10), torch.full((8, 6), 50.0)], dim=1).to(device)
    rows = [make_row(temperature=0.0)] * 4 + [make_row(seed=s, temperature=2.0) for s in range(4)]
    assert max(Sampler(30, device, base_seed=0).sample(logits, rows).tolist()) < 30


# ---- logprob helpers ------------------------------------------------------------------------

@on_devices
def test_compute_logprobs_is_float32_log_softmax_of_raw_logits(device):
    logits = randn(5, 64, seed=12, scale=4.0, device=device).to(torch.bfloat16)
    logprobs = compute_logprobs(logits)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, torch.log_softmax(logits.float(), dim=-1))


@on_devices
def test_gather_and_top_logprobs(device):
    logprobs = torch.log_softmax(randn(4, 32, seed=13, device=device), dim=-1)
    tokens = torch.tensor([0, 31, 7, 7])  # on the CPU: the helper moves them
    expected = torch.stack([logprobs[i, t] for i, t in enumerate(tokens.tolist())])
    assert torch.equal(gather_token_logprobs(logprobs, tokens), expected)
    values, ids = top_logprobs(logprobs, 3)
    assert values.shape == ids.shape == (4, 3)
    assert torch.equal(values, logprobs.sort(dim=-1, descending=True).values[:, :3])
    assert torch.equal(logprobs.gather(1, ids), values)
    values, ids = top_logprobs(logprobs, 100)
    assert ids.shape == (4, 32) and sorted(ids[0].tolist()) == list(range(32))


# ---- logprob convention (SGLang's) and the custom logit processor ---------------------------------

def test_logprob_modes_follow_sglang_and_offer_the_sampling_distribution(monkeypatch):
    from rollserve.executor.sampler import compute_sampling_logprobs, default_logprob_mode

    logits = randn(3, 50, seed=4, scale=3.0)
    rows = [make_row(temperature=0.7), make_row(temperature=0.7, top_k=5),
            make_row(temperature=0.0)]
    scaled = compute_sampling_logprobs(logits, rows, 50, "scaled")
    assert torch.allclose(scaled[0], torch.log_softmax(logits[0] / 0.7, dim=-1), atol=1e-6)
    assert torch.allclose(scaled[1], torch.log_softmax(logits[1] / 0.7, dim=-1), atol=1e-6)
    # greedy: logits unscaled
    assert torch.allclose(scaled[2], torch.log_softmax(logits[2], dim=-1), atol=1e-6)
    raw = compute_sampling_logprobs(logits, rows, 50, "raw")
    assert torch.allclose(raw, torch.log_softmax(logits, dim=-1), atol=1e-6)
    assert (raw[0] - scaled[0]).abs().max() > 0.1  # the two conventions really differ at T=0.7
    sampling = compute_sampling_logprobs(logits, rows, 50, "sampling")
    expected = filtered_probs(logits[1:2], [rows[1].params])[0]
    kept = expected > 0
    assert kept.sum() == 5 and torch.allclose(sampling[1][kept], expected[kept].log(), atol=1e-5)
    assert (sampling[1][~kept] == torch.finfo(torch.float32).min).all()
    assert sampling[2][logits[2].argmax()] == 0.0
    # a request's own mode wins over the server default
    mixed = compute_sampling_logprobs(logits, [make_row(temperature=0.7, logprob_mode="raw")],
                                      50, "scaled")
    assert torch.allclose(mixed[0], raw[0], atol=1e-6)
    monkeypatch.setenv("SGLANG_RETURN_ORIGINAL_LOGPROB", "1")
    assert default_logprob_mode() == "raw"
    monkeypatch.setenv("SGLANG_RETURN_ORIGINAL_LOGPROB", "false")
    assert default_logprob_mode() == "scaled"


def ban_tokens(logits, params_list):
    """A custom logit processor with SGLang's signature: bans custom_params["banned"]."""
    out = logits.clone()
    for i, params in enumerate(params_list):
        out[i, params["banned"]] = float("-inf")
    return out


def test_custom_logit_processor_sees_only_rows_with_custom_params():
    from rollserve.executor.sampler import load_logit_processor

    assert load_logit_processor("tests.executor.test_sampler:ban_tokens") is ban_tokens
    logits = torch.zeros(2, 8)
    logits[:, 3] = 5.0
    sampler = Sampler(8, "cpu", base_seed=0, logit_processor=ban_tokens)
    rows = [make_row(temperature=0.0, custom_params={"banned": [3]}), make_row(temperature=0.0)]
    assert sampler.sample(logits, rows).tolist()[1] == 3
    assert sampler.sample(logits, rows).tolist()[0] != 3
    with pytest.raises(ValueError):
        load_logit_processor("no_colon_here")
