"""Our models against transformers on the same random weights: packed prefill,
chunked prefill and batched decode, with the KV pool in between (float32, atol 1e-4)."""

import os

import pytest
import torch

from rollserve.executor.model_loader import iterate_checkpoint, load_model, resolve_dtype
from rollserve.executor.models import get_model_class
from tests.executor.model_harness import ModelHarness
from tests.tiny_models import tiny_config

ATOL = 1e-4
VOCAB = 320

VARIANTS = {
    "llama": dict(arch="llama"),
    "llama_tied_llama3_rope": dict(arch="llama", tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "llama_yarn_bias_sharded": dict(arch="llama", attention_bias=True, mlp_bias=True,
                                    rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 64},
                                    shard="40KB"),
    "mistral_window": dict(arch="mistral", sliding_window=5),
    "qwen2_tied": dict(arch="qwen2", tie_word_embeddings=True),
    "qwen2_linear_rope": dict(arch="qwen2", rope_scaling={"rope_type": "linear", "factor": 2.0}),
    "qwen3": dict(arch="qwen3"),
    "qwen3_tied": dict(arch="qwen3", tie_word_embeddings=True),
}


def _make_config(arch: str, **overrides):
    if arch == "mistral":
        from transformers import MistralConfig

        return MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, **overrides)
    return tiny_config(arch, VOCAB, **overrides)


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every tensor random (biases and norm weights too, so their loading is tested), with
    weights large enough that logits spread well beyond the tolerance."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if "norm" in name:
            param.copy_(1 + 0.2 * noise)
        elif "embed_tokens" in name:
            param.copy_(noise)
        else:
            param.copy_(0.15 * noise)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """variant -> (folder saved with save_pretrained, the transformers model)."""
    from transformers import AutoModelForCausalLM

    out = {}
    for seed, (variant, spec) in enumerate(VARIANTS.items()):
        spec = dict(spec)
        arch, shard = spec.pop("arch"), spec.pop("shard", None)
        config = _make_config(arch, **spec)
        config._attn_implementation = "eager"
        hf_model = AutoModelForCausalLM.from_config(config).float().eval()
        _randomize(hf_model, seed)
        folder = str(tmp_path_factory.mktemp(variant))
        hf_model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
        out[variant] = (folder, hf_model)
    return out


def _reference_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()


def _prompts(seed: int, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def _load(checkpoints, variant):
    folder, hf_model = checkpoints[variant]
    return ModelHarness(load_model(folder, torch.float32, "cpu")), hf_model


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_packed_prefill_matches_transformers(checkpoints, variant):
    harness, hf_model = _load(checkpoints, variant)
    prompts = _prompts(1, [7, 1, 12, 3])
    rows = [harness.new_request() for _ in prompts]
    for prompt, logits in zip(prompts, harness.forward(rows, prompts)):
        reference = _reference_logits(hf_model, prompt)
        assert reference.std() > 0.5  # logits far apart compared with ATOL
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_chunked_prefill_matches_transformers(checkpoints, variant):
    """A prompt split in two chunks; the second chunk shares the forward with a fresh prompt."""
    harness, hf_model = _load(checkpoints, variant)
    long_prompt, short_prompt = _prompts(2, [13, 4])
    long_row, short_row = harness.new_request(), harness.new_request()
    (first,) = harness.forward([long_row], [long_prompt[:5]])
    second, short = harness.forward([long_row, short_row], [long_prompt[5:], short_prompt])
    reference = _reference_logits(hf_model, long_prompt)
    torch.testing.assert_close(first, reference[:5], atol=ATOL, rtol=0)
    torch.testing.assert_close(second, reference[5:], atol=ATOL, rtol=0)
    torch.testing.assert_close(short, _reference_logits(hf_model, short_prompt), atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_batched_decode_matches_transformers(checkpoints, variant):
    """Greedy decode of a batch for several steps; a new prompt joins mid-way (mixed batch)."""
    harness, hf_model = _load(checkpoints, variant)
    sequences = _prompts(3, [6, 2, 9])
    rows = [harness.new_request() for _ in sequences]
    last = [logits[-1] for logits in harness.forward(rows, sequences)]
    for step in range(5):
        for seq, logits in zip(sequences, last):
            seq.append(int(logits.argmax()))
        new_tokens = [[seq[-1]] for seq in sequences]
        if step == 2:  # a fresh prompt is prefilled in the same forward as the decodes
            sequences.append(_prompts(4, [5])[0])
            rows.append(harness.new_request())
            new_tokens.append(list(sequences[-1]))
        outputs = harness.forward(rows, new_tokens)
        for seq, logits in zip(sequences, outputs):
            reference = _reference_logits(hf_model, seq)[-len(logits):]
            torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
        last = [logits[-1] for logits in outputs]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_single_request_decode_matches_transformers(checkpoints, variant):
    """One request decoding alone: its one-row steps take the GEMV path on CUDA (or under
    TRITON_INTERPRET=1), F.linear on CPU."""
    harness, hf_model = _load(checkpoints, variant)
    (seq,) = _prompts(5, [7])
    row = harness.new_request()
    (logits,) = harness.forward([row], [list(seq)])
    for _ in range(4):
        seq.append(int(logits[-1].argmax()))
        (logits,) = harness.forward([row], [[seq[-1]]])
        torch.testing.assert_close(logits, _reference_logits(hf_model, seq)[-1:], atol=ATOL, rtol=0)


# ---------------------------------------------------------------- loading


def test_sharded_checkpoint_is_streamed_from_every_shard(checkpoints):
    folder, hf_model = checkpoints["llama_yarn_bias_sharded"]
    shards = [f for f in os.listdir(folder) if f.endswith(".safetensors")]
    assert len(shards) > 1
    names = [name for name, _ in iterate_checkpoint(folder)]
    assert sorted(names) == sorted(hf_model.state_dict())


def test_pytorch_bin_fallback(checkpoints, tmp_path):
    folder, hf_model = checkpoints["qwen3"]
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    torch.save(hf_model.state_dict(), bin_folder / "pytorch_model.bin")
    model = load_model(str(bin_folder), torch.float32, "cpu")
    harness = ModelHarness(model)
    (prompt,) = _prompts(5, [6])
    (logits,) = harness.forward([harness.new_request()], [prompt])
    torch.testing.assert_close(logits, _reference_logits(hf_model, prompt), atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["llama", "qwen2_tied", "qwen3"])
def test_checkpoint_spec_lists_the_checkpoint_tensors(checkpoints, variant):
    folder, hf_model = checkpoints[variant]
    model = load_model(folder, torch.bfloat16, "cpu")
    spec = model.checkpoint_spec()
    expected = {name: tuple(t.shape) for name, t in hf_model.state_dict().items()}
    if hf_model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        assert model.skips_checkpoint_name("lm_head.weight")
    assert {name: shape for name, (shape, _) in spec.items()} == expected
    assert all(dtype == torch.bfloat16 for _, dtype in spec.values())


def test_load_weights_rejects_unknown_names_and_wrong_shapes(checkpoints):
    folder, _ = checkpoints["qwen2_tied"]
    model = load_model(folder, torch.float32, "cpu")
    with pytest.raises(ValueError, match="model.layers.0.self_attn.bogus.weight"):
        model.load_weights([("model.layers.0.self_attn.bogus.weight", torch.zeros(3))])
    with pytest.raises(ValueError, match=r"model.layers.1.self_attn.k_proj.bias.*\(7,\)"):
        model.load_weights([("model.layers.1.self_attn.k_proj.bias", torch.zeros(7))])
    # Buffers some old checkpoints carry are ignored.
    assert model.load_weights([("model.layers.0.self_attn.rotary_emb.inv_freq", torch.zeros(8))]) == set()


def test_load_weights_writes_fused_shards_in_place(checkpoints):
    folder, _ = checkpoints["llama"]
    model = load_model(folder, torch.float32, "cpu")
    new_v = torch.randn(2 * 16, 64)
    loaded = model.load_weights([("model.layers.1.self_attn.v_proj.weight", new_v)])
    assert loaded == {"model.layers.1.self_attn.v_proj.weight"}
    fused = model.model.layers[1].self_attn.qkv_proj.weight
    assert torch.equal(fused[-32:], new_v)


def test_missing_tensor_in_checkpoint_is_an_error(checkpoints, tmp_path):
    from safetensors.torch import save_file

    folder, hf_model = checkpoints["llama"]
    (tmp_path / "config.json").write_text(open(os.path.join(folder, "config.json")).read())
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if "down_proj" not in k}
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="down_proj"):
        load_model(str(tmp_path), torch.float32, "cpu")


def test_dummy_load_format_needs_only_the_config(tmp_path):
    config = tiny_config("qwen3", VOCAB, tie_word_embeddings=False)
    config.architectures = ["Qwen3ForCausalLM"]
    config.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]
    first = load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")
    second = load_model(str(tmp_path), torch.float32, "cpu", load_format="dummy")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name  # deterministic
    weight = first.model.layers[0].mlp.down_proj.weight
    assert 0.01 < weight.std() < 0.03
    assert torch.equal(first.model.norm.weight, torch.ones(64))
    harness = ModelHarness(first)
    (logits,) = harness.forward([harness.new_request()], [[1, 2, 3]])
    assert logits.shape == (3, VOCAB) and torch.isfinite(logits).all()


def test_unsupported_architecture_is_named(checkpoints):
    from transformers import GPT2Config

    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        get_model_class(GPT2Config(architectures=["GPT2LMHeadModel"]))


def test_resolve_dtype():
    config = tiny_config("llama", VOCAB)
    config.dtype = torch.float16
    assert resolve_dtype(config, "auto", "cpu") == torch.float32
    assert resolve_dtype(config, "auto", "cuda") == torch.float16
    config.dtype = torch.float32
    assert resolve_dtype(config, "auto", "cuda:0") == torch.bfloat16
    assert resolve_dtype(config, "half", "cpu") == torch.float16
    assert resolve_dtype(config, "float", "cuda") == torch.float32
    assert resolve_dtype(config, "bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype(config, "int8", "cpu")


def test_rope_table_rows_equal_the_computed_cos_sin():
    """ModelRunner tabulates cos/sin for the context length; a forward gathers rows of it."""
    from transformers import LlamaConfig

    from rollserve.executor.layers.rotary import RotaryEmbedding

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=512,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    rope = RotaryEmbedding(config, 16)
    positions = torch.tensor([0, 1, 77, 300, 511, 5])
    computed = rope(positions)
    rope.cache_positions(512)
    cached = rope(positions)
    assert rope.cos_sin.shape == (512, 16)
    for a, b in zip(cached, computed):
        assert a.shape == b.shape and torch.equal(a, b)
