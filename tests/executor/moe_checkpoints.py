"""Tiny random MoE / DeepSeek checkpoints saved by transformers (real HF folders), for the
model, routing and engine tests. Every weight random, router and correction bias included."""

from __future__ import annotations

import torch

VOCAB = 320
_ATTN = dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=2048)
_DEEPSEEK = dict(_ATTN, num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=32,
                 n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
                 first_k_dense_replace=1, kv_lora_rank=32, qk_nope_head_dim=16,
                 qk_rope_head_dim=8, v_head_dim=16)

# experts > top-k everywhere; dense first layers, shared experts and grouped routing in DeepSeek
VARIANTS = {
    "qwen3_moe": ("qwen3_moe", dict(_ATTN, num_key_value_heads=2, head_dim=16, intermediate_size=96,
                                    moe_intermediate_size=32, num_experts=6, num_experts_per_tok=2,
                                    norm_topk_prob=True, mlp_only_layers=[1])),
    "qwen3_moe_unnormalized": ("qwen3_moe", dict(_ATTN, num_key_value_heads=2, head_dim=16,
                                                 intermediate_size=96, moe_intermediate_size=32,
                                                 num_experts=4, num_experts_per_tok=3,
                                                 norm_topk_prob=False)),
    "mixtral": ("mixtral", dict(_ATTN, num_key_value_heads=2, intermediate_size=48,
                                num_local_experts=4, num_experts_per_tok=2)),
    "deepseek_v2_lite": ("deepseek_v2", dict(_DEEPSEEK, q_lora_rank=None, topk_method="greedy",
                                             norm_topk_prob=False)),
    "deepseek_v2_grouped": ("deepseek_v2", dict(_DEEPSEEK, q_lora_rank=24, n_group=4, topk_group=2,
                                                topk_method="group_limited_greedy",
                                                routed_scaling_factor=1.5, norm_topk_prob=False)),
    "deepseek_v3": ("deepseek_v3", dict(_DEEPSEEK, q_lora_rank=24, n_group=4, topk_group=2,
                                        routed_scaling_factor=2.5, norm_topk_prob=True)),
}


def make_config(model_type: str, vocab_size: int = VOCAB, **overrides):
    from transformers import (DeepseekV2Config, DeepseekV3Config, MixtralConfig, Qwen3MoeConfig)

    cls = {"qwen3_moe": Qwen3MoeConfig, "mixtral": MixtralConfig, "deepseek_v2": DeepseekV2Config,
           "deepseek_v3": DeepseekV3Config}[model_type]
    config = cls(vocab_size=vocab_size, **overrides)
    config.bos_token_id, config.eos_token_id = 1, 2
    config._attn_implementation = "eager"
    return config


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that logits spread well beyond the tolerance; norms around one."""
    generator = torch.Generator().manual_seed(seed)
    tensors = list(model.named_parameters()) + [
        (n, b) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
    for name, tensor in tensors:
        noise = torch.randn(tensor.shape, generator=generator)
        if "norm" in name:
            tensor.copy_(1 + 0.2 * noise)
        elif "embed_tokens" in name:
            tensor.copy_(noise)
        elif "correction_bias" in name or name.endswith("gate.weight"):
            tensor.copy_(noise)  # routers far from ties, so the choice is not float noise
        else:
            tensor.copy_(0.15 * noise)


def save_variant(variant: str, folder: str, seed: int = 0, tokenizer_dir: str = None):
    """Saves a random `variant` checkpoint into folder (with tokenizer_dir's tokenizer, the
    vocabulary then being the tokenizer's); returns the transformers model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_type, overrides = VARIANTS[variant]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else None
    vocab = len(tokenizer) if tokenizer else VOCAB
    config = make_config(model_type, vocab_size=vocab, **overrides)
    hf_model = AutoModelForCausalLM.from_config(config).float().eval()
    randomize(hf_model, seed)
    hf_model.save_pretrained(folder)
    if tokenizer:
        tokenizer.save_pretrained(folder)
    return hf_model
