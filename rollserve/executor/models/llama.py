"""Llama (and Mistral, which is Llama with a sliding attention window).

Tokens of all requests arrive packed in one [T] sequence; attention reads the
per-forward ForwardContext to know which tokens belong together.

Tensor parallel (executor/parallel_state.py): each rank holds its query heads and their KV
heads (q|k|v column-parallel, o_proj row-parallel), its share of the MLP (gate|up
column-parallel, down_proj row-parallel) and its vocabulary rows (layers/parallel.py).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.linear import FusedLinear, norm_then_linear
from rollserve.executor.layers.parallel import (RowParallelLinear, column_slices, embedding,
                                                gather_vocab_logits, vocab_parallel_head)
from rollserve.executor.parallel_state import kv_head_range, split_evenly, tp_rank, tp_size
from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.layers.rotary import RotaryEmbedding
from rollserve.executor.layers.utils import default_dtype, head_dim_of, sliding_window_of
from rollserve.executor.models.weights import (checkpoint_slices, checkpoint_spec, checkpoint_targets,
                                               load_named_tensors)
from rollserve.kernels.linear import linear
from rollserve.executor.attention.base import attention
from rollserve.kernels.rotary import RopeInputs


class LlamaAttention(nn.Module):
    def __init__(self, hf_config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        rank, size = tp_rank(), tp_size()
        first_head, self.num_heads = split_evenly(hf_config.num_attention_heads, rank, size,
                                                  "num_attention_heads")
        first_kv, self.num_kv_heads = kv_head_range(hf_config.num_key_value_heads, rank, size)
        self.head_dim = head_dim_of(hf_config)
        self.scaling = self.head_dim ** -0.5
        self.sliding_window = sliding_window_of(hf_config, layer_id)
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        qkv_bias, o_bias = self.projection_biases(hf_config)
        kv_rows = (first_kv * self.head_dim, self.kv_size)
        slices = None if size == 1 else column_slices(
            {"q_proj": (first_head * self.head_dim, self.q_size), "k_proj": kv_rows,
             "v_proj": kv_rows}, qkv_bias)
        if slices and hf_config.num_key_value_heads < size:  # replicated KV heads: full = all heads
            full = hf_config.num_key_value_heads * self.head_dim
            slices = {k: (dataclasses.replace(v, full=full) if k[0] in "kv" else v)
                      for k, v in slices.items()}
        self.qkv_proj = FusedLinear(hf_config.hidden_size, {
            "q_proj": self.q_size, "k_proj": self.kv_size, "v_proj": self.kv_size}, bias=qkv_bias,
            slices=slices)
        self.o_proj = RowParallelLinear(hf_config.num_attention_heads * self.head_dim,
                                        hf_config.hidden_size, bias=o_bias)

    @staticmethod
    def projection_biases(hf_config) -> Tuple[bool, bool]:
        """(bias on q/k/v, bias on o_proj)."""
        bias = getattr(hf_config, "attention_bias", False)
        return bias, bias

    def rope_inputs(self, cos: torch.Tensor, sin: torch.Tensor) -> RopeInputs:
        return RopeInputs(cos, sin)  # Qwen3 adds its per-head q/k norm weights

    def forward(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        """qkv: the projected [T, q|k|v] rows (the layer projects right after its norm)."""
        num_tokens = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        out = attention(q, k, v, ctx, self.layer_id, self.scaling, self.sliding_window,
                        rope=self.rope_inputs(cos, sin))
        return self.o_proj(out.view(num_tokens, self.q_size))  # all-reduced under TP


class LlamaMLP(nn.Module):
    def __init__(self, hf_config):
        super().__init__()
        if hf_config.hidden_act != "silu":
            raise ValueError(f"hidden_act {hf_config.hidden_act!r} is not supported (only silu)")
        full, bias = hf_config.intermediate_size, getattr(hf_config, "mlp_bias", False)
        start, size = split_evenly(full, tp_rank(), tp_size(), "intermediate_size")
        slices = None if tp_size() == 1 else column_slices(
            {"gate_proj": (start, size), "up_proj": (start, size)}, bias)
        self.gate_up_proj = FusedLinear(hf_config.hidden_size, {"gate_proj": size, "up_proj": size},
                                        bias=bias, slices=slices)
        self.down_proj = RowParallelLinear(full, hf_config.hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor,
                norm: RMSNorm) -> Tuple[torch.Tensor, torch.Tensor]:
        """(down(silu(gate) * up) of norm(hidden + residual), the new residual)."""
        act, residual = norm_then_linear(norm, self.gate_up_proj, hidden, residual, silu_mul=True)
        return self.down_proj(act), residual  # all-reduced under TP


class LlamaDecoderLayer(nn.Module):
    def __init__(self, hf_config, layer_id: int, attention_cls: type):
        super().__init__()
        self.self_attn = attention_cls(hf_config, layer_id)
        self.mlp = LlamaMLP(hf_config)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], cos: torch.Tensor,
                sin: torch.Tensor, ctx: ForwardContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (this layer's output delta, running residual); their sum is the stream."""
        qkv, residual = norm_then_linear(self.input_layernorm, self.self_attn.qkv_proj, hidden, residual)
        hidden = self.self_attn(qkv, cos, sin, ctx)
        return self.mlp(hidden, residual, self.post_attention_layernorm)


class LlamaModel(nn.Module):
    def __init__(self, hf_config, attention_cls: type, layer_cls: type = LlamaDecoderLayer):
        super().__init__()
        self.embed_tokens = embedding(hf_config.vocab_size, hf_config.hidden_size)
        self.layers = nn.ModuleList(layer_cls(hf_config, i, attention_cls)
                                    for i in range(hf_config.num_hidden_layers))
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(hf_config, head_dim_of(hf_config))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext,
                input_embeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_embeds: the token embeddings when the caller made them (VLMs merge images in)."""
        cos, sin = self.rotary_emb(positions)
        hidden = self.embed_tokens(input_ids) if input_embeds is None else input_embeds
        residual = None
        capture = ctx.capture_layers  # EAGLE3 drafts read some layers' input (draft_runner.py)
        for i, layer in enumerate(self.layers):
            if capture is not None and i in capture:
                ctx.aux_hidden.append(hidden.clone() if residual is None else hidden + residual)
            hidden, residual = layer(hidden, residual, cos, sin, ctx)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    attention_cls: type = LlamaAttention
    layer_cls: type = LlamaDecoderLayer  # MoE models (qwen3_moe.py, mixtral.py) swap the MLP
    supports_tensor_parallel = True  # dense layers only; MoE subclasses turn it off

    def __init__(self, hf_config, dtype: torch.dtype):
        super().__init__()
        self.config = hf_config
        self.dtype = dtype
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))
        with default_dtype(dtype):
            self.model = LlamaModel(hf_config, self.attention_cls, self.layer_cls)
            self.lm_head = None if self.tie_word_embeddings else vocab_parallel_head(
                hf_config.vocab_size, hf_config.hidden_size)
        self.num_layers = hf_config.num_hidden_layers
        # this rank's KV heads: what its KV pool holds
        self.num_kv_heads = kv_head_range(hf_config.num_key_value_heads, tp_rank(), tp_size())[1]
        self.head_dim = head_dim_of(hf_config)
        self.vocab_size = hf_config.vocab_size
        self._targets = checkpoint_targets(self)
        self._slices = checkpoint_slices(self)  # empty on one rank

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        return self.model(input_ids, positions, ctx)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return gather_vocab_logits(linear(hidden, weight), self.vocab_size).float()

    def checkpoint_spec(self) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """HF checkpoint name -> (shape, dtype) of every tensor this model loads."""
        return checkpoint_spec(self._targets, self._slices)

    def skips_checkpoint_name(self, name: str) -> bool:
        """Tensors some checkpoints carry that this model does not need."""
        return name.endswith("rotary_emb.inv_freq") or (
            self.tie_word_embeddings and name == "lm_head.weight")

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        """Loads HF-named tensors (any subset); returns the names loaded."""
        return load_named_tensors(self._targets, weights, self.skips_checkpoint_name,
                                  type(self).__name__, self._slices)
