"""Tiny random Qwen2-VL / Qwen2.5-VL checkpoints saved as real HF folders: config, safetensors,
the default model's tokenizer with Qwen's vision tokens added, and the Qwen2-VL image
processor's preprocessor_config.json (small min/max pixels so images stay a few patches)."""

from __future__ import annotations

import os

import numpy as np
import torch

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
# processor settings: 14-px patches merged 2x2 -> one LM token per 28x28 pixels
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 2, 28 * 28 * 24


def tiny_vlm_config(arch: str, tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in zip(
        ("vision_start_token_id", "vision_end_token_id", "image_token_id", "video_token_id"),
        VISION_TOKENS)}
    text = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=2048, rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [2, 3, 3]},
                bos_token_id=1, eos_token_id=2)
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                      hidden_act="quick_gelu", patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
        cls = Qwen2VLConfig
    else:  # window 56 px = 2x2 merged tokens: images of 3+ tokens a side have several windows
        vision = dict(depth=3, hidden_size=32, out_hidden_size=64, intermediate_size=48,
                      num_heads=2, hidden_act="silu", patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, window_size=56,
                      fullatt_block_indexes=[1])
        cls = Qwen2_5_VLConfig
    config = cls(text_config=text, vision_config=vision, **ids)
    config.architectures = [{"qwen2_vl": "Qwen2VLForConditionalGeneration",
                             "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[arch]]
    return config


def save_tiny_vlm(arch: str, out_dir: str, tokenizer_dir: str, seed: int = 0) -> str:
    """arch: qwen2_vl | qwen2_5_vl. A random float32 model, sharpened as tiny_models does."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    config = tiny_vlm_config(arch, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).float()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else None
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(out_dir)
    return out_dir


def random_image(width: int, height: int, seed: int):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)
