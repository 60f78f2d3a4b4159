"""Qwen2-VL and Qwen2.5-VL: a vision tower (qwen2_vl_vision.py) whose merged patch features
replace the image tokens' embeddings, then the Qwen2 language model with M-RoPE.

Module names follow transformers 5's checkpoints (`model.language_model.*`, `model.visual.*`,
`lm_head.*`); older checkpoints (`model.layers.*`, `visual.*`) are renamed on load.

Per forward the executor's MultimodalRunner (executor/multimodal.py) passes `ctx.mm`: the
[3, T] rope positions and which rows take which image features. Without it (decode steps,
CUDA graphs included) every token is text after the prompt, whose three position streams are
equal: position + the request's rope delta, read from `rope_deltas` by request row.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Set, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.parallel import vocab_parallel_head, gather_vocab_logits
from rollserve.executor.layers.rotary import MRotaryEmbedding
from rollserve.executor.layers.utils import default_dtype, head_dim_of
from rollserve.executor.models.llama import LlamaForCausalLM, LlamaModel
from rollserve.executor.models.qwen2 import Qwen2Attention
from rollserve.executor.models.qwen2_vl_vision import (Qwen2_5VisionTransformer,
                                                       Qwen2VisionTransformer)
from rollserve.executor.models.weights import checkpoint_slices, checkpoint_targets
from rollserve.kernels.linear import linear

_LEGACY_PREFIXES = (("model.language_model.", "model.language_model."),
                    ("model.visual.", "model.visual."), ("visual.", "model.visual."),
                    ("model.", "model.language_model."))


def canonical_name(name: str) -> str:
    """A checkpoint tensor's name in transformers 5's layout (older layouts renamed)."""
    for old, new in _LEGACY_PREFIXES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


class Qwen2VLForConditionalGeneration(LlamaForCausalLM):
    vision_cls: type = Qwen2VisionTransformer
    # the language model splits as Qwen2's does; the vision tower runs whole on every rank
    supports_tensor_parallel = True
    takes_images = True

    def __init__(self, hf_config, dtype: torch.dtype):
        nn.Module.__init__(self)
        text = getattr(hf_config, "text_config", None) or hf_config
        vision = hf_config.vision_config
        self.config, self.text_config, self.dtype = hf_config, text, dtype
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        head_dim = head_dim_of(text)
        section = (getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None)
                   or {}).get("mrope_section", [16, 24, 24])
        with default_dtype(dtype):
            self.model = nn.Module()
            self.model.language_model = LlamaModel(text, Qwen2Attention)
            self.model.language_model.rotary_emb = MRotaryEmbedding(text, head_dim, section)
            self.model.visual = self.vision_cls(vision)
            self.lm_head = None if self.tie_word_embeddings else vocab_parallel_head(
                text.vocab_size, text.hidden_size)
        self.num_layers = text.num_hidden_layers
        self.num_kv_heads = text.num_key_value_heads
        self.head_dim = head_dim
        self.vocab_size = text.vocab_size
        self.image_token_id = hf_config.image_token_id
        self.spatial_merge_size = vision.spatial_merge_size
        self.rope_deltas: Optional[torch.Tensor] = None  # [request rows], set by the runner
        self.weights_generation = 0  # +1 per weight write: cached image features go stale
        self._targets = checkpoint_targets(self)
        self._slices = checkpoint_slices(self)

    def encode_images(self, pixels: torch.Tensor, grids: Sequence[Tuple[int, int, int]]
                      ) -> List[torch.Tensor]:
        """One vision forward over several images: each image's merged features [n_i, hidden]."""
        features = self.model.visual(pixels, grids)
        merge = self.spatial_merge_size ** 2
        return list(features.split([t * h * w // merge for t, h, w in grids]))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        lm = self.model.language_model
        mm = ctx.mm
        if mm is None:  # decode rows: one token per request, or a verify step's several
            rope = positions
            if self.rope_deltas is not None:
                deltas = self.rope_deltas.index_select(0, ctx.req_pool_indices)
                if positions.shape[0] != deltas.shape[0]:  # speculative verify rows
                    deltas = deltas.repeat_interleave(ctx.extend_lens,
                                                      output_size=positions.shape[0])
                rope = positions + deltas
            return lm(input_ids, rope, ctx)
        embeds = lm.embed_tokens(input_ids)
        if mm.image_rows.numel():
            embeds = embeds.index_copy(0, mm.image_rows, mm.image_embeds.to(embeds.dtype))
        return lm(input_ids, mm.positions, ctx, input_embeds=embeds)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        lm = self.model.language_model
        weight = lm.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return gather_vocab_logits(linear(hidden, weight), self.vocab_size).float()

    canonical_name = staticmethod(canonical_name)  # weight_sync validates names through it

    def skips_checkpoint_name(self, name: str) -> bool:
        return super().skips_checkpoint_name(canonical_name(name))

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        self.weights_generation += 1
        return super().load_weights((canonical_name(n), t) for n, t in weights)


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    vision_cls = Qwen2_5VisionTransformer
