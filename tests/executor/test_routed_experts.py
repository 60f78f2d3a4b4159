"""The routed experts a forward records (one row per KV slot) equal transformers' router
choices (as sets per token: top-k order is unspecified), through SGLang's base64 encoding, for
each MoE family; dense layers are -1."""

import pytest
import torch

from rollserve.executor.model_loader import load_model
from rollserve.executor.routed_experts import (RoutedExpertsStore, decode_routed_experts,
                                               encode_routed_experts)
from tests.executor.model_harness import ModelHarness
from tests.executor.moe_checkpoints import VOCAB, save_variant


def _transformers_choices(hf_model, tokens):
    """Per MoE layer, the top-k ids its router returned, [T, K] each, via forward hooks."""
    choices, hooks = [], []
    for name, module in hf_model.named_modules():
        if name.endswith("mlp.gate") or name.endswith("block_sparse_moe.gate"):
            hooks.append(module.register_forward_hook(
                lambda _m, _i, out: choices.append(out[2].reshape(-1, out[2].shape[-1]))))
    with torch.no_grad():
        hf_model(torch.tensor([tokens]))
    for hook in hooks:
        hook.remove()
    return torch.stack(choices, dim=1)  # [T, L, K]


@pytest.mark.parametrize("variant", ["qwen3_moe", "mixtral", "deepseek_v2_grouped", "deepseek_v3"])
def test_captured_routing_equals_transformers(tmp_path, variant):
    hf_model = save_variant(variant, str(tmp_path), seed=5)
    model = load_model(str(tmp_path), torch.float32, "cpu")
    harness = ModelHarness(model)
    tokens = torch.randint(0, VOCAB, (13,), generator=torch.Generator().manual_seed(0)).tolist()
    store = RoutedExpertsStore.for_model(model, harness.allocator.num_slots + 1, torch.device("cpu"))
    ctx = harness.context([harness.new_request()], [len(tokens)])
    ctx.moe_recorder = store.bind(ctx.out_cache_loc)
    with torch.inference_mode():
        model(torch.tensor(tokens), ctx.positions, ctx)
    encoded = encode_routed_experts(store.gather(ctx.out_cache_loc))
    ours = torch.from_numpy(decode_routed_experts(encoded, model.num_layers, store.top_k).copy())
    expected = _transformers_choices(hf_model, tokens)  # [T, MoE layers, K]
    dense = [layer for layer in range(model.num_layers) if layer not in store.moe_layers]
    assert ours.shape == (len(tokens), model.num_layers, store.top_k)
    assert (ours[:, dense] == -1).all()
    assert torch.equal(ours[:, store.moe_layers].sort(dim=-1).values,
                       expected.sort(dim=-1).values.to(torch.int32))


def test_the_rows_are_counted_in_the_kv_pool_sizing(tmp_path):
    """A row of int16 ids per layer and choice for every slot: what the sizing adds per token."""
    save_variant("qwen3_moe", str(tmp_path), seed=1)
    model = load_model(str(tmp_path), torch.float32, "cpu")
    store = RoutedExpertsStore.for_model(model, 10, torch.device("cpu"))
    per_row = store.rows[0].numel() * store.rows.element_size()
    assert RoutedExpertsStore.bytes_per_token(model) == per_row == model.num_layers * 2 * 2
