"""Qwen3-MoE: Qwen3 attention; the MLP of most layers is a softmax top-k MoE block
(mlp_only_layers and decoder_sparse_step say which stay dense)."""

from __future__ import annotations

from torch import nn

from rollserve.executor.layers.moe import SparseMoeBlock
from rollserve.executor.models.llama import LlamaMLP
from rollserve.executor.models.moe_layer import MoEDecoderLayer, MoEForCausalLM
from rollserve.executor.models.qwen3 import Qwen3Attention
from rollserve.kernels.moe import RoutingSpec


class Qwen3MoeDecoderLayer(MoEDecoderLayer):
    def make_mlp(self, hf_config, layer_id: int) -> nn.Module:
        step = getattr(hf_config, "decoder_sparse_step", 1) or 1
        sparse = (layer_id not in (getattr(hf_config, "mlp_only_layers", None) or [])
                  and hf_config.num_experts > 0 and (layer_id + 1) % step == 0)
        if not sparse:
            return LlamaMLP(hf_config)
        spec = RoutingSpec(top_k=hf_config.num_experts_per_tok,
                           renormalize=bool(hf_config.norm_topk_prob))
        return SparseMoeBlock(hf_config.hidden_size, hf_config.num_experts,
                              hf_config.moe_intermediate_size, spec, layer_id)


class Qwen3MoeForCausalLM(MoEForCausalLM):
    attention_cls = Qwen3Attention
    layer_cls = Qwen3MoeDecoderLayer
