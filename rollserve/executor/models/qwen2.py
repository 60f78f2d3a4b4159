"""Qwen2: Llama with a bias on the q/k/v projections (none on o_proj)."""

from __future__ import annotations

from typing import Tuple

from rollserve.executor.models.llama import LlamaAttention, LlamaForCausalLM


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def projection_biases(hf_config) -> Tuple[bool, bool]:
        return True, False


class Qwen2ForCausalLM(LlamaForCausalLM):
    attention_cls = Qwen2Attention
