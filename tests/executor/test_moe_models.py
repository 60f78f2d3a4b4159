"""MoE and DeepSeek models against transformers on the same random weights saved as real
checkpoints: packed prefill, chunked prefill with a cached prefix, batched decode (float32)."""

import json
import os

import pytest
import torch

from rollserve.executor.attention.mla import MLABackend
from rollserve.executor.mla_kv_pool import MLAKVPool
from rollserve.executor.model_loader import iterate_checkpoint, load_model
from tests.executor.model_harness import ModelHarness
from tests.executor.moe_checkpoints import VARIANTS, VOCAB, save_variant

ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = {}
    for seed, variant in enumerate(VARIANTS):
        folder = str(tmp_path_factory.mktemp(variant))
        out[variant] = (folder, save_variant(variant, folder, seed))
    return out


def _reference_logits(hf_model, tokens):
    with torch.no_grad():
        return hf_model(torch.tensor([tokens])).logits[0].float()


def _prompts(seed, lengths):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in lengths]


class MLAHarness(ModelHarness):
    """The model over the latent pool and the MLA backend, as the runner builds them."""

    def __init__(self, model, absorb_extend: bool):
        super().__init__(model)
        d = model.mla_dims
        self.pool = MLAKVPool(2048, model.num_layers, d.kv_lora_rank, d.qk_rope_head_dim,
                              model.dtype, "cpu")
        self.backend = MLABackend(torch.device("cpu"), absorb_extend=absorb_extend)

    def context(self, rows, extend_lens):
        ctx = super().context(rows, extend_lens)
        ctx.attn_backend = self.backend
        return ctx


# (variant, attention): "mla" absorbs decode only, "mla_absorb_all" extends too, "expanded"
# is --disable-mla (per-head K/V through torch_native)
CASES = [(v, "-") for v in VARIANTS if not v.startswith("deepseek")] + [
    (v, mode) for v in VARIANTS if v.startswith("deepseek")
    for mode in ("mla", "mla_absorb_all", "expanded")]


def _harness(checkpoints, variant, mode="-"):
    folder, hf_model = checkpoints[variant]
    model = load_model(folder, torch.float32, "cpu")
    if mode.startswith("mla"):
        return MLAHarness(model, absorb_extend=mode == "mla_absorb_all"), hf_model
    return ModelHarness(model), hf_model


@pytest.mark.parametrize("variant,mode", CASES)
def test_prefill_chunked_prefill_and_decode_match_transformers(checkpoints, variant, mode):
    harness, hf_model = _harness(checkpoints, variant, mode)
    prompts = _prompts(1, [7, 1, 12])
    rows = [harness.new_request() for _ in prompts]
    # request 2 is prefilled in two chunks: the second sees its first chunk from the KV pool
    first = harness.forward(rows, [prompts[0], prompts[1], prompts[2][:5]])
    rest = harness.forward([rows[2]], [prompts[2][5:]])[0]
    chunked = torch.cat([first[2], rest])
    for prompt, logits in zip(prompts, [first[0], first[1], chunked]):
        reference = _reference_logits(hf_model, prompt)
        assert reference.std() > 0.5
        torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    sequences = [list(p) for p in prompts]
    last = [first[0][-1], first[1][-1], rest[-1]]
    for _ in range(4):  # greedy decode of the batch
        for seq, logits in zip(sequences, last):
            seq.append(int(logits.argmax()))
        outputs = harness.forward(rows, [[seq[-1]] for seq in sequences])
        for seq, logits in zip(sequences, outputs):
            torch.testing.assert_close(logits, _reference_logits(hf_model, seq)[-1:], atol=ATOL, rtol=0)
        last = [logits[-1] for logits in outputs]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_checkpoint_spec_is_the_saved_tensor_set(checkpoints, variant):
    folder, _ = checkpoints[variant]
    model = load_model(folder, torch.float32, "cpu")
    saved = {name: tuple(t.shape) for name, t in iterate_checkpoint(folder)}
    assert {name: shape for name, (shape, _) in model.checkpoint_spec().items()} == saved


def test_mtp_layer_weights_are_kept_not_required(checkpoints, tmp_path):
    """DeepSeek-V3 checkpoints carry the next-n (MTP) layer as model.layers.<num_hidden_layers>."""
    from safetensors.torch import save_file

    folder, hf_model = checkpoints["deepseek_v3"]
    extra = str(tmp_path / "mtp")
    os.makedirs(extra)
    tensors = dict(iterate_checkpoint(folder))
    mtp = {"model.layers.3.eh_proj.weight": torch.randn(64, 128),
           "model.layers.3.enorm.weight": torch.ones(64)}
    save_file({**tensors, **mtp}, os.path.join(extra, "model.safetensors"))
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(extra, "config.json"), "w") as f:
        json.dump(config, f)
    model = load_model(extra, torch.float32, "cpu")
    assert sorted(model.mtp_weights) == sorted(mtp)
    torch.testing.assert_close(model.mtp_weights["model.layers.3.eh_proj.weight"],
                               mtp["model.layers.3.eh_proj.weight"])
    assert not any(name.startswith("model.layers.3.") for name in model.checkpoint_spec())
