"""A Llama decoder layer whose MLP may be a sparse MoE block (Qwen3-MoE, Mixtral).

Subclasses say which layers are sparse and how their routers work (`make_mlp`); the block is
called with the forward context so the MoE recorder sees the routing.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.linear import norm_then_linear
from rollserve.executor.layers.moe import SparseMoeBlock
from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM


class MoEDecoderLayer(LlamaDecoderLayer):
    mlp_name = "mlp"  # the checkpoint's name of the layer's MLP / MoE block

    def __init__(self, hf_config, layer_id: int, attention_cls: type):
        nn.Module.__init__(self)  # not LlamaDecoderLayer's: no dense MLP to build and throw away
        self.self_attn = attention_cls(hf_config, layer_id)
        self.add_module(self.mlp_name, self.make_mlp(hf_config, layer_id))
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def make_mlp(self, hf_config, layer_id: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], cos: torch.Tensor,
                sin: torch.Tensor, ctx: ForwardContext) -> Tuple[torch.Tensor, torch.Tensor]:
        qkv, residual = norm_then_linear(self.input_layernorm, self.self_attn.qkv_proj, hidden, residual)
        hidden = self.self_attn(qkv, cos, sin, ctx)
        mlp = getattr(self, self.mlp_name)
        if isinstance(mlp, SparseMoeBlock):
            return mlp(hidden, residual, self.post_attention_layernorm, ctx)
        return mlp(hidden, residual, self.post_attention_layernorm)


def moe_layer_ids(model: nn.Module) -> list:
    """The layers whose MLP is a sparse block, in order (what routing records are indexed by)."""
    return [m.layer_id for m in model.modules() if isinstance(m, SparseMoeBlock)]


class MoEForCausalLM(LlamaForCausalLM):
    """What the engine asks of any MoE model (server info, recorders)."""
    # attention as Llama's; the experts split per layers/moe_parallel.py (--ep-size)
    supports_tensor_parallel = True

    def moe_info(self) -> dict:
        blocks = [m for m in self.modules() if isinstance(m, SparseMoeBlock)]
        return {"num_experts": blocks[0].num_experts if blocks else 0,
                "top_k": blocks[0].top_k if blocks else 0,
                "moe_layers": [b.layer_id for b in blocks]}
