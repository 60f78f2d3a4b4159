"""Qwen3: Llama with an RMSNorm over each query and key head before the rotation."""

from __future__ import annotations

import torch

from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.models.llama import LlamaAttention, LlamaForCausalLM
from rollserve.kernels.rotary import RopeInputs


class Qwen3Attention(LlamaAttention):
    def __init__(self, hf_config, layer_id: int):
        super().__init__(hf_config, layer_id)
        self.q_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)

    def rope_inputs(self, cos: torch.Tensor, sin: torch.Tensor) -> RopeInputs:
        """attention normalizes each head (fused with the rotation on CUDA)."""
        return RopeInputs(cos, sin, self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_cls = Qwen3Attention
