"""Qwen3: Llama with an RMSNorm over each query and key head before the rotation."""

from __future__ import annotations

from typing import Tuple

import torch

from rollserve.engine.models.layers import RMSNorm
from rollserve.engine.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen3Attention(LlamaAttention):
    def __init__(self, hf_config, layer_id: int):
        super().__init__(hf_config, layer_id)
        self.q_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, hf_config.rms_norm_eps)

    def normalize_qk(self, q: torch.Tensor, k: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.q_norm(q), self.k_norm(k)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_cls = Qwen3Attention
