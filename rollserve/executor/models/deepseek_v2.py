"""DeepSeek-V2 / V3 (and their distills' architecture): multi-head latent attention (MLA) and
MoE with shared experts.

MLA: queries come through a low-rank q_a/q_b pair (or one q_proj, V2-Lite); keys and values
through one compressed latent per token, c = norm(kv_a(x)) [kv_lora_rank], plus a decoupled
rope key k_pe [qk_rope_head_dim] shared by all heads. kv_b_proj expands c into each head's
no-rope key part and value. Only (c, k_pe) is cached when MLA is on (attention/mla.py); with
--disable-mla the expanded K/V go through the ordinary backends.

MoE: the first `first_k_dense_replace` layers keep a dense MLP; the others route to
n_routed_experts (V2: softmax, greedy or group-limited greedy; V3: sigmoid + correction bias,
top-k within the best groups) scaled by routed_scaling_factor, plus the shared experts.

Layers past num_hidden_layers in a checkpoint are the MTP (next-n) module: kept in
`mtp_weights` for speculative decoding, not run here.

Tensor parallel: each rank holds its heads' rows of q_b_proj (or q_proj) and kv_b_proj and
their columns of o_proj (row-parallel, one all-reduce); the low-rank q_a / kv_a projections
and the latent they produce are the same on every rank, so each rank caches the same latent
and attends with its own heads. MoE and dense MLPs split as in layers/moe_parallel.py.
"""

from __future__ import annotations

import math
import re
from typing import Dict, Iterable, Optional, Set, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.mla import MLADims, mla_attention
from rollserve.executor.layers.moe import SparseMoeBlock
from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.layers.parallel import CheckpointSlice, RowParallelLinear
from rollserve.executor.layers.rotary import RotaryEmbedding
from rollserve.executor.layers.utils import default_dtype
from rollserve.executor.models.llama import LlamaMLP
from rollserve.executor.models.moe_layer import MoEForCausalLM
from rollserve.executor.parallel_state import split_evenly, tp_rank, tp_size
from rollserve.kernels.linear import linear
from rollserve.kernels.moe import RoutingSpec
from rollserve.kernels.rotary import apply_rotary_torch, rope_parameters

LATENT_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm use the default eps, not rms_norm_eps


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """DeepSeek's rope: pairs (x0, x1), (x2, x3), ... each rotated by one frequency. The result
    is laid out de-interleaved (evens' rotation then odds'); q and k share the layout, so their
    dot products are those of the interleaved form."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.cat((even * cos - odd * sin, odd * cos + even * sin), dim=-1)


def _yarn_mscale(scale: float, mscale: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def head_rows(in_features: int, num_heads: int, rows_per_head: int) -> nn.Linear:
    """A projection whose output rows come per head: this rank's heads' rows under TP."""
    first, local = split_evenly(num_heads, tp_rank(), tp_size(), "num_attention_heads")
    proj = nn.Linear(in_features, local * rows_per_head, bias=False)
    if tp_size() > 1:
        proj.tp_slices = {"weight": CheckpointSlice(0, first * rows_per_head, local * rows_per_head,
                                                    num_heads * rows_per_head)}
    return proj


def mla_softmax_scale(hf_config) -> float:
    """1/sqrt(qk_head_dim), times mscale^2 under YaRN with mscale_all_dim (DeepSeek's reference)."""
    scale = (hf_config.qk_nope_head_dim + hf_config.qk_rope_head_dim) ** -0.5
    params = rope_parameters(hf_config)
    if params["rope_type"] != "default" and params.get("mscale_all_dim"):
        mscale = _yarn_mscale(params["factor"], params["mscale_all_dim"])
        scale = scale * mscale * mscale
    return scale


class DeepseekV2Attention(nn.Module):
    def __init__(self, hf_config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        total_heads = hf_config.num_attention_heads
        self.num_heads = split_evenly(total_heads, tp_rank(), tp_size(), "num_attention_heads")[1]
        self.dims = MLADims(num_heads=self.num_heads, kv_lora_rank=hf_config.kv_lora_rank,
                            qk_nope_head_dim=hf_config.qk_nope_head_dim,
                            qk_rope_head_dim=hf_config.qk_rope_head_dim,
                            v_head_dim=hf_config.v_head_dim)
        self.scaling = mla_softmax_scale(hf_config)
        self.interleaved_rope = bool(getattr(hf_config, "rope_interleave", True))
        hidden, bias = hf_config.hidden_size, bool(getattr(hf_config, "attention_bias", False))
        d = self.dims
        self.q_lora_rank = getattr(hf_config, "q_lora_rank", None)
        if self.q_lora_rank:
            self.q_a_proj = nn.Linear(hidden, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = head_rows(self.q_lora_rank, total_heads, d.qk_head_dim)
        else:
            self.q_proj = head_rows(hidden, total_heads, d.qk_head_dim)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, d.latent_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(d.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = head_rows(d.kv_lora_rank, total_heads, d.qk_nope_head_dim + d.v_head_dim)
        self.o_proj = RowParallelLinear(total_heads * d.v_head_dim, hidden, bias=bias)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.interleaved_rope:
            return apply_rotary_interleaved(x, cos, sin)
        return apply_rotary_torch(x, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                ctx: ForwardContext) -> torch.Tensor:
        """x: the normed hidden states [T, hidden]."""
        num_tokens, d = x.shape[0], self.dims
        if self.q_lora_rank:
            q = linear(self.q_a_layernorm(linear(x, self.q_a_proj.weight, self.q_a_proj.bias)),
                       self.q_b_proj.weight)
        else:
            q = linear(x, self.q_proj.weight)
        q = q.view(num_tokens, self.num_heads, d.qk_head_dim)
        q_nope, q_pe = q.split([d.qk_nope_head_dim, d.qk_rope_head_dim], dim=-1)
        latent, k_pe = linear(x, self.kv_a_proj_with_mqa.weight, self.kv_a_proj_with_mqa.bias).split(
            [d.kv_lora_rank, d.qk_rope_head_dim], dim=-1)
        latent = self.kv_a_layernorm(latent.contiguous())
        q_pe = self._rotate(q_pe, cos, sin)
        k_pe = self._rotate(k_pe.reshape(num_tokens, 1, d.qk_rope_head_dim), cos, sin)
        out = mla_attention(q_nope, q_pe, latent, k_pe[:, 0], self.kv_b_proj.weight, d, ctx,
                            self.layer_id, self.scaling)
        return self.o_proj(out.reshape(num_tokens, -1))  # all-reduced under TP


class DeepseekV2DecoderLayer(nn.Module):
    uses_correction_bias = False  # V3 overrides the routing

    def __init__(self, hf_config, layer_id: int, attention_cls: type):
        super().__init__()
        self.self_attn = attention_cls(hf_config, layer_id)
        self.mlp = self._make_mlp(hf_config, layer_id)
        self.input_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def routing_spec(self, hf_config) -> RoutingSpec:
        grouped = getattr(hf_config, "topk_method", "greedy") == "group_limited_greedy"
        return RoutingSpec(top_k=hf_config.num_experts_per_tok,
                           renormalize=bool(getattr(hf_config, "norm_topk_prob", False)),
                           num_groups=hf_config.n_group if grouped else None,
                           topk_groups=hf_config.topk_group if grouped else None,
                           scaling_factor=float(getattr(hf_config, "routed_scaling_factor", 1.0) or 1.0))

    def _make_mlp(self, hf_config, layer_id: int) -> nn.Module:
        freq = getattr(hf_config, "moe_layer_freq", 1) or 1
        if not hf_config.n_routed_experts or layer_id < hf_config.first_k_dense_replace \
                or layer_id % freq != 0:
            return LlamaMLP(hf_config)
        shared = (hf_config.n_shared_experts or 0) * hf_config.moe_intermediate_size
        return SparseMoeBlock(hf_config.hidden_size, hf_config.n_routed_experts,
                              hf_config.moe_intermediate_size, self.routing_spec(hf_config), layer_id,
                              shared_intermediate_size=shared,
                              correction_bias=self.uses_correction_bias)

    def forward(self, hidden: torch.Tensor, residual: Optional[torch.Tensor], cos: torch.Tensor,
                sin: torch.Tensor, ctx: ForwardContext) -> Tuple[torch.Tensor, torch.Tensor]:
        x, residual = self.input_layernorm(hidden, residual) if residual is not None else (
            self.input_layernorm(hidden), hidden)
        hidden = self.self_attn(x, cos, sin, ctx)
        if isinstance(self.mlp, SparseMoeBlock):
            return self.mlp(hidden, residual, self.post_attention_layernorm, ctx)
        return self.mlp(hidden, residual, self.post_attention_layernorm)


class DeepseekV3DecoderLayer(DeepseekV2DecoderLayer):
    uses_correction_bias = True

    def routing_spec(self, hf_config) -> RoutingSpec:
        scoring = getattr(hf_config, "scoring_func", "sigmoid") or "sigmoid"
        return RoutingSpec(top_k=hf_config.num_experts_per_tok, scoring=scoring,
                           renormalize=bool(getattr(hf_config, "norm_topk_prob", True)),
                           num_groups=hf_config.n_group, topk_groups=hf_config.topk_group,
                           group_score="top2",
                           scaling_factor=float(getattr(hf_config, "routed_scaling_factor", 1.0) or 1.0))


class DeepseekV2ForCausalLM(MoEForCausalLM):
    attention_cls = DeepseekV2Attention
    layer_cls = DeepseekV2DecoderLayer

    def __init__(self, hf_config, dtype: torch.dtype):
        super().__init__(hf_config, dtype)
        with default_dtype(dtype):  # rope over the decoupled rope dims only
            self.model.rotary_emb = RotaryEmbedding(hf_config, hf_config.qk_rope_head_dim)
        dims = self.model.layers[0].self_attn.dims
        self.mla_dims: MLADims = dims  # the latent KV pool's layout (model_runner.py)
        # the pool of --disable-mla: every head's expanded key (v padded to the key size)
        self.num_kv_heads, self.head_dim = dims.num_heads, dims.qk_head_dim
        self.mtp_weights: Dict[str, torch.Tensor] = {}  # next-n layers, for speculative decoding

    def _is_mtp(self, name: str) -> bool:
        match = re.match(r"model\.layers\.(\d+)\.", name)
        return match is not None and int(match.group(1)) >= self.num_layers

    def skips_checkpoint_name(self, name: str) -> bool:
        """The MTP layers are no parameter of this model (load_weights keeps them aside), so
        a weight update's check lets them through (DeepSeek-V3's checkpoints carry them)."""
        return self._is_mtp(name) or super().skips_checkpoint_name(name)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> Set[str]:
        device = self.model.embed_tokens.weight.device

        def without_mtp():
            for name, tensor in weights:
                if self._is_mtp(name):
                    if not isinstance(tensor, torch.Tensor):  # a lazy safetensors slice (TP)
                        tensor = tensor[:]
                    self.mtp_weights[name] = tensor.to(device=device, dtype=self.dtype
                                                       if tensor.is_floating_point() else tensor.dtype)
                else:
                    yield name, tensor

        return super().load_weights(without_mtp())


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    layer_cls = DeepseekV3DecoderLayer
