"""Tiny EAGLE / EAGLE3 draft heads and a DeepSeek checkpoint with an MTP layer, saved as the
safetensors folders SGLang loads (names, shapes and config keys of the published heads)."""

from __future__ import annotations

import json
import os
from typing import Dict

import torch
from safetensors.torch import save_file


def _layer(prefix: str, hidden: int, heads: int, kv_heads: int, head_dim: int, inter: int,
           attn_in: int, gen: torch.Generator, input_norm: bool) -> Dict[str, torch.Tensor]:
    def w(*shape):
        return torch.randn(*shape, generator=gen) * shape[-1] ** -0.5

    out = {f"{prefix}self_attn.q_proj.weight": w(heads * head_dim, attn_in),
           f"{prefix}self_attn.k_proj.weight": w(kv_heads * head_dim, attn_in),
           f"{prefix}self_attn.v_proj.weight": w(kv_heads * head_dim, attn_in),
           f"{prefix}self_attn.o_proj.weight": w(hidden, heads * head_dim),
           f"{prefix}mlp.gate_proj.weight": w(inter, hidden),
           f"{prefix}mlp.up_proj.weight": w(inter, hidden),
           f"{prefix}mlp.down_proj.weight": w(hidden, inter),
           f"{prefix}post_attention_layernorm.weight": torch.ones(hidden)}
    if input_norm:
        out[f"{prefix}input_layernorm.weight"] = torch.ones(hidden)
    return out


def _config(target_dir: str, arch: str, **extra) -> dict:
    with open(os.path.join(target_dir, "config.json")) as f:
        target = json.load(f)
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "rms_norm_eps", "max_position_embeddings", "rope_theta", "vocab_size", "hidden_act")
    config = {k: target[k] for k in keys if k in target}
    config.update(architectures=[arch], model_type="llama", num_hidden_layers=1,
                  tie_word_embeddings=False, torch_dtype="float32", **extra)
    return config


def save_eagle_head(target_dir: str, out_dir: str, seed: int = 0,
                    tensors: Dict[str, torch.Tensor] = None) -> str:
    """An EAGLE-2 head (LlamaForCausalLMEagle): fc [H, 2H] + bias, layers.0 without its input
    norm; random unless `tensors` (a trained head's) are given."""
    config = _config(target_dir, "LlamaForCausalLMEagle")
    if tensors is None:
        gen = torch.Generator().manual_seed(seed)
        h = config["hidden_size"]
        heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
        tensors = {"fc.weight": torch.randn(h, 2 * h, generator=gen) * (2 * h) ** -0.5,
                   "fc.bias": torch.zeros(h),
                   **_layer("layers.0.", h, heads, kv, h // heads, config["intermediate_size"],
                            h, gen, input_norm=False)}
    os.makedirs(out_dir, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    return out_dir


def save_eagle3_head(target_dir: str, out_dir: str, draft_vocab_size: int = 96,
                     seed: int = 0) -> str:
    """An EAGLE-3 head (LlamaForCausalLMEagle3): fc [H, 3H], midlayer reading [2H], norm, its
    own lm_head over draft_vocab_size tokens and d2t / t2d maps."""
    config = _config(target_dir, "LlamaForCausalLMEagle3", draft_vocab_size=draft_vocab_size)
    gen = torch.Generator().manual_seed(seed)
    h, vocab = config["hidden_size"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hot = torch.randperm(vocab, generator=gen)[:draft_vocab_size].sort().values
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[hot] = True
    tensors = {"fc.weight": torch.randn(h, 3 * h, generator=gen) * (3 * h) ** -0.5,
               **_layer("midlayer.", h, heads, kv, h // heads, config["intermediate_size"], 2 * h,
                        gen, input_norm=True),
               "midlayer.hidden_norm.weight": torch.ones(h), "norm.weight": torch.ones(h),
               "lm_head.weight": torch.randn(draft_vocab_size, h, generator=gen),
               "d2t": hot - torch.arange(draft_vocab_size), "t2d": t2d}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f)
    return out_dir
