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


def add_mtp_layer(folder: str, seed: int = 0) -> str:
    """DeepSeek-V3's layout: the MTP layer as model.layers.<num_hidden_layers>.* (a copy of the
    last layer's kind, with enorm / hnorm / eh_proj / shared_head) in the target's own
    checkpoint, and num_nextn_predict_layers in its config."""
    from safetensors.torch import load_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    last, mtp = config["num_hidden_layers"] - 1, config["num_hidden_layers"]
    gen = torch.Generator().manual_seed(seed)
    h = config["hidden_size"]
    for name, tensor in list(tensors.items()):
        if name.startswith(f"model.layers.{last}."):
            noise = torch.randn(tensor.shape, generator=gen) * 0.05 if tensor.is_floating_point() else 0
            tensors[name.replace(f"layers.{last}.", f"layers.{mtp}.")] = (tensor + noise).contiguous()
    prefix = f"model.layers.{mtp}."
    tensors.update({prefix + "enorm.weight": torch.ones(h), prefix + "hnorm.weight": torch.ones(h),
                    prefix + "eh_proj.weight": torch.randn(h, 2 * h, generator=gen) * (2 * h) ** -0.5,
                    prefix + "shared_head.norm.weight": torch.ones(h),
                    prefix + "embed_tokens.weight": tensors["model.embed_tokens.weight"].clone(),
                    prefix + "shared_head.head.weight": tensors["lm_head.weight"].clone()})
    save_file(tensors, path, metadata={"format": "pt"})
    config["num_nextn_predict_layers"] = 1
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    return folder


def save_small_vocab_llama(out_dir: str, tokenizer_dir: str, vocab_size: int = 512) -> str:
    """A tiny Llama over the first `vocab_size` token ids (with the full tokenizer saved beside
    it): cheap to fit a draft head to."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny_models import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab_size))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(out_dir)
    return out_dir


def train_eagle_head(target_dir: str, out_dir: str, steps: int = 80, seed: int = 0) -> str:
    """An EAGLE head fitted for a hundred-odd Adam steps to the tiny target: from (hidden state
    at i, token i+1) it learns the target's greedy choice after token i+1 through the target's
    LM head (cross-entropy), on fresh random and self-generated text each step. Built from
    transformers' Llama layer: an implementation independent of the engine's."""
    from transformers import AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_pretrained(target_dir, torch_dtype=torch.float32).eval()
    config = target.config
    config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    h = config.hidden_size
    fc = torch.nn.Linear(2 * h, h)
    layer = LlamaDecoderLayer(config, 0)
    layer.input_layernorm = torch.nn.Identity()  # EAGLE's layer 0 has none
    rotary = LlamaRotaryEmbedding(config)
    embed = target.model.embed_tokens.weight.detach()
    head = target.lm_head.weight.detach()
    opt = torch.optim.Adam(list(fc.parameters()) + list(layer.parameters()), lr=1e-2)
    n = 15
    positions = torch.arange(n)[None]
    mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
    for _ in range(steps):
        # fresh text each step, half random, half the target's own greedy continuations
        seqs = torch.randint(3, config.vocab_size, (64, n + 1), generator=gen)
        with torch.no_grad():
            for j in range(n - 3, n + 1):  # greedy at the end, all rows at once
                seqs[32:, j] = target(seqs[32:, :j]).logits[:, -1].argmax(-1)
            out = target(seqs, output_hidden_states=True)
            hidden, labels = out.hidden_states[-1], out.logits.argmax(-1)
        # row i: (hidden at i, token i + 1) -> the target's choice after token i + 1
        x = fc(torch.cat([embed[seqs[:, 1:]], hidden[:, :-1]], dim=-1))
        pred = layer(x, attention_mask=mask, position_ids=positions.expand(64, n),
                     position_embeddings=rotary(x, positions.expand(64, n)))
        pred = pred[0] if isinstance(pred, tuple) else pred
        loss = torch.nn.functional.cross_entropy((pred @ head.T).flatten(0, 1),
                                                 labels[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    tensors = {"fc.weight": fc.weight.detach(), "fc.bias": fc.bias.detach()}
    tensors.update({f"layers.0.{k}": v.detach() for k, v in layer.state_dict().items()
                    if not k.startswith("input_layernorm")})
    return save_eagle_head(target_dir, out_dir, tensors=tensors)
