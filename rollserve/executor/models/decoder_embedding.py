"""Decoder-only embedding models: our Llama / Qwen2 / Qwen3 stack without the LM head.

Serves the `LlamaModel`, `Qwen2Model`, `Qwen3Model` architectures, and a *ForCausalLM
checkpoint started with --is-embedding (e.g. Qwen3-Embedding). The engine's Pooler
takes the last token's hidden state (the usual pooling for decoder embedders).
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.utils import default_dtype, head_dim_of
from rollserve.executor.models.llama import LlamaAttention, LlamaModel
from rollserve.executor.models.qwen2 import Qwen2Attention
from rollserve.executor.models.qwen3 import Qwen3Attention
from rollserve.executor.models.weights import checkpoint_spec, checkpoint_targets, load_named_tensors

BACKBONE = "model."


def _checkpoint_prefix(hf_config) -> str:
    """*Model checkpoints name the backbone's tensors bare ("layers.0..."); *ForCausalLM and
    *ForSequenceClassification ones under "model."."""
    architectures = getattr(hf_config, "architectures", None) or []
    return "" if any(a.endswith("Model") for a in architectures) else BACKBONE


class LlamaEmbeddingModel(nn.Module):
    attention_cls: type = LlamaAttention
    is_causal = True

    def __init__(self, hf_config, dtype: torch.dtype):
        super().__init__()
        self.config = hf_config
        self.dtype = dtype
        with default_dtype(dtype):
            self.model = LlamaModel(hf_config, self.attention_cls)
            self.score = self.make_head(hf_config)
        self.num_layers = hf_config.num_hidden_layers
        self.num_kv_heads = hf_config.num_key_value_heads
        self.head_dim = head_dim_of(hf_config)
        self.vocab_size = hf_config.vocab_size
        prefix = _checkpoint_prefix(hf_config)
        self._targets = {(name if prefix else name.removeprefix(BACKBONE)): target
                         for name, target in checkpoint_targets(self).items()}

    def make_head(self, hf_config) -> Optional[nn.Module]:
        return None  # embeddings: the pooled hidden state is the output

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def pooled_output(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled if self.score is None else self.score(pooled)

    def checkpoint_spec(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        return checkpoint_spec(self._targets)

    def skips_checkpoint_name(self, name: str) -> bool:
        return name.endswith("rotary_emb.inv_freq") or name == "lm_head.weight"

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        named = ((self._target_name(name), tensor) for name, tensor in weights)
        return load_named_tensors(self._targets, named, self.skips_checkpoint_name,
                                  type(self).__name__)

    def _target_name(self, name: str) -> str:
        """Accepts backbone names with or without "model.", whichever this checkpoint lacks."""
        if name in self._targets:
            return name
        other = name.removeprefix(BACKBONE) if name.startswith(BACKBONE) else BACKBONE + name
        return other if other in self._targets else name


class Qwen2EmbeddingModel(LlamaEmbeddingModel):
    attention_cls = Qwen2Attention


class Qwen3EmbeddingModel(LlamaEmbeddingModel):
    attention_cls = Qwen3Attention
