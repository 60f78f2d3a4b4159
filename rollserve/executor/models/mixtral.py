"""Mixtral: Mistral attention; every MLP is a softmax top-k MoE block whose top-k weights are
renormalised, named `block_sparse_moe` with experts w1 (gate), w3 (up), w2 (down)."""

from __future__ import annotations

from torch import nn

from rollserve.executor.layers.moe import EXPERT_NAMES, SparseMoeBlock
from rollserve.executor.models.moe_layer import MoEDecoderLayer, MoEForCausalLM
from rollserve.kernels.moe import RoutingSpec


class MixtralDecoderLayer(MoEDecoderLayer):
    mlp_name = "block_sparse_moe"

    def make_mlp(self, hf_config, layer_id: int) -> nn.Module:
        if hf_config.hidden_act != "silu":
            raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported (only silu)")
        spec = RoutingSpec(top_k=hf_config.num_experts_per_tok, renormalize=True)
        return SparseMoeBlock(hf_config.hidden_size, hf_config.num_local_experts,
                              hf_config.intermediate_size, spec, layer_id,
                              expert_names=EXPERT_NAMES["mixtral"])


class MixtralForCausalLM(MoEForCausalLM):
    layer_cls = MixtralDecoderLayer
