"""Tiny random checkpoints saved as real HF folders (config, safetensors, tokenizer).

They borrow the default model's tokenizer, so the whole engine (tokenization,
chat template, detokenization) runs on them exactly as on a real model.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

TINY_DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)


def tiny_config(arch: str, vocab_size: int, **overrides):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    extra = {"head_dim": 16} if arch == "qwen3" else {}
    config = cls(vocab_size=vocab_size, **TINY_DIMS, **extra, **overrides)
    config.eos_token_id = 2
    config.bos_token_id = 1
    return config


def save_tiny_checkpoint(arch: str, out_dir: str, tokenizer_dir: str, seed: int = 0,
                         dtype: torch.dtype = torch.float32, max_shard_size: Optional[str] = None,
                         **overrides) -> str:
    """Builds a random `arch` model (llama | qwen2 | qwen3) and saves it with a tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_config(arch, len(tokenizer), **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    # Random init is close to uniform: sharpen the logits so greedy choices are clear
    # and parity tests are not decided by float noise between near-equal logits.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    os.makedirs(out_dir, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)
    tokenizer.save_pretrained(out_dir)
    return out_dir
