"""BERT encoder (config.json architecture `BertModel`, e.g. all-MiniLM-L6-v2).

Bidirectional attention over each whole input (the engine's attention with
causal=False), post-LayerNorm layers, learned absolute positions, one token type.
Returns the last hidden states; the engine's Pooler turns them into an embedding.
BertPooler (the tanh head over [CLS]) is not built: sentence-transformers ignores it.
"""

from __future__ import annotations

from typing import Dict, Iterable, Set, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.linear import FusedLinear
from rollserve.executor.layers.utils import default_dtype
from rollserve.executor.models.weights import checkpoint_spec, checkpoint_targets, load_named_tensors
from rollserve.executor.attention.base import attention

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
# Checkpoint tensors the encoder does not use.
UNUSED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "embeddings.token_type_ids")


class BertEmbeddings(nn.Module):
    def __init__(self, hf_config):
        super().__init__()
        hidden = hf_config.hidden_size
        self.word_embeddings = nn.Embedding(hf_config.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(hf_config.max_position_embeddings, hidden)
        self.token_type_embeddings = nn.Embedding(hf_config.type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=hf_config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # Single-segment inputs: token type 0 everywhere, as transformers defaults to.
        # Summed in transformers' order (words + type, then + position) for bitwise parity.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x + self.position_embeddings(positions))


class DenseAddNorm(nn.Module):
    """LayerNorm(dense(x) + residual): the output block after attention and after the MLP."""

    def __init__(self, in_features: int, hidden: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_features, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, hf_config, layer_id: int):
        super().__init__()
        hidden = hf_config.hidden_size
        self.layer_id = layer_id
        self.num_heads = hf_config.num_attention_heads
        self.head_dim = hidden // self.num_heads
        self.scaling = self.head_dim ** -0.5
        # Shard names carry the "self." of the checkpoint's attention.self.{query,key,value}.
        self.qkv_proj = FusedLinear(hidden, {"self.query": hidden, "self.key": hidden,
                                             "self.value": hidden}, bias=True)
        self.output = DenseAddNorm(hidden, hidden, hf_config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = (t.view(num_tokens, self.num_heads, self.head_dim)
                   for t in self.qkv_proj(hidden).chunk(3, dim=-1))
        out = attention(q, k, v, ctx, self.layer_id, self.scaling, causal=False)
        return self.output(out.reshape(num_tokens, -1), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, hf_config):
        super().__init__()
        if hf_config.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported "
                             f"(supported: {sorted(ACTIVATIONS)})")
        self.dense = nn.Linear(hf_config.hidden_size, hf_config.intermediate_size)
        self.act = ACTIVATIONS[hf_config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, hf_config, layer_id: int):
        super().__init__()
        self.attention = BertAttention(hf_config, layer_id)
        self.intermediate = BertIntermediate(hf_config)
        self.output = DenseAddNorm(hf_config.intermediate_size, hf_config.hidden_size,
                                   hf_config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        hidden = self.attention(hidden, ctx)
        return self.output(self.intermediate(hidden), hidden)


class BertEncoder(nn.Module):
    def __init__(self, hf_config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(hf_config, i)
                                   for i in range(hf_config.num_hidden_layers))


class BertModel(nn.Module):
    is_causal = False  # the pooler and scheduler read this: no prefix cache, no chunking

    def __init__(self, hf_config, dtype: torch.dtype):
        super().__init__()
        kind = getattr(hf_config, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"position_embedding_type {kind!r} is not supported (only absolute)")
        if getattr(hf_config, "is_decoder", False):
            raise ValueError("BERT configured as a decoder (is_decoder=true) is not supported")
        self.config = hf_config
        self.dtype = dtype
        with default_dtype(dtype):
            self.embeddings = BertEmbeddings(hf_config)
            self.encoder = BertEncoder(hf_config)
        self.num_layers = hf_config.num_hidden_layers
        self.num_kv_heads = hf_config.num_attention_heads
        self.head_dim = hf_config.hidden_size // hf_config.num_attention_heads
        self.vocab_size = hf_config.vocab_size
        self._targets = checkpoint_targets(self)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        hidden = self.embeddings(input_ids, positions)
        for layer in self.encoder.layer:
            hidden = layer(hidden, ctx)
        return hidden

    def pooled_output(self, pooled: torch.Tensor) -> torch.Tensor:
        return pooled  # an embedding model: no head after pooling

    def checkpoint_spec(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        return checkpoint_spec(self._targets)

    def skips_checkpoint_name(self, name: str) -> bool:
        return name.startswith(UNUSED_PREFIXES)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        renamed = ((_checkpoint_name(name), tensor) for name, tensor in weights)
        return load_named_tensors(self._targets, renamed, self.skips_checkpoint_name, "BertModel")


def _checkpoint_name(name: str) -> str:
    """Names as a BertModel saves them: no "bert." prefix (BertFor* checkpoints), LayerNorm
    weight/bias rather than the gamma/beta of old TF conversions."""
    name = name.removeprefix("bert.")
    if ".LayerNorm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name
