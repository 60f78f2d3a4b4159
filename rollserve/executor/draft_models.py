"""Draft models of speculative decoding, in the checkpoint formats SGLang loads.

Each drafts from the target's hidden states: `forward(input_ids, positions, ctx, hidden)`
runs one draft step over packed tokens (token t_{i+1} at position i with the target's hidden
state of position i, or the draft's own from its previous step) and returns
(states for the logits, states fed to the next draft step); `draft_ids` turns the former
into target token ids (greedy: the chain's drafts are the draft's argmax, which the
verifier treats as one-hot proposals, exact in distribution).

* EAGLE (`LlamaForCausalLMEagle`, EAGLE-1/2 heads): fc(concat(embed(token), hidden)) through
  Llama decoder layers (layer 0 without its input norm), no final norm; the target's
  embeddings and LM head. Checkpoint names: fc.weight, fc.bias, layers.N.* (a leading
  "model." is accepted); embed_tokens / lm_head in the folder are ignored (the target's).
* EAGLE3 (`LlamaForCausalLMEagle3`): the target's residual stream at three layers
  (executor/models/llama.py captures it), concatenated and projected by fc [3H -> H]; one
  layer whose attention reads concat(input_layernorm(embeds), hidden_norm(hidden)) [2H];
  a final norm and its own lm_head over draft_vocab_size tokens, mapped to the target's
  vocabulary by d2t (target id = draft id + d2t[draft id]); without draft_vocab_size, the
  target's LM head. Later draft steps feed the layer's pre-norm output back (width H: no fc).
* NEXTN (DeepSeek-V3's MTP layer, kept by models/deepseek_v2.py in `mtp_weights`):
  eh_proj(concat(enorm(embed(token)), hnorm(hidden))) through one decoder layer of the
  target's kind (MLA + MoE), shared_head.norm, then the target's LM head.

Tensor parallel: the draft's decoder layer is split over the ranks as the target's are
(q|k|v and gate|up column-parallel, o_proj and down_proj row-parallel, each rank caching its
KV heads); fc / eh_proj, the norms and EAGLE3's lm_head are replicated: their inputs (the
all-reduced hidden states and embeddings) are the same on every rank.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional, Tuple

import torch
from torch import nn

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.layers.linear import FusedLinear
from rollserve.executor.layers.norm import RMSNorm
from rollserve.executor.layers.rotary import RotaryEmbedding
from rollserve.executor.layers.utils import default_dtype, head_dim_of
from rollserve.executor.model_loader import iterate_checkpoint
from rollserve.executor.models.llama import (LlamaAttention, LlamaDecoderLayer, LlamaMLP,
                                             LlamaModel)
from rollserve.executor.models.weights import (checkpoint_slices, checkpoint_targets,
                                               load_named_tensors)
from rollserve.kernels.linear import linear

State = Tuple[torch.Tensor, torch.Tensor]


class DraftModel(nn.Module):
    """What the draft runner asks of a draft model."""

    aux_layers: Optional[Tuple[int, ...]] = None  # target layers whose input it reads (EAGLE3)

    def __init__(self, target: nn.Module):
        super().__init__()
        self._target = [target]  # a list: the target's modules are not this model's parameters

    @property
    def target(self) -> nn.Module:
        return self._target[0]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.target.model.embed_tokens(input_ids)

    def draft_logits(self, states: torch.Tensor) -> torch.Tensor:
        return self.target.compute_logits(states)

    def target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Target vocabulary ids of draft vocabulary ids."""
        return ids

    def draft_ids(self, states: torch.Tensor) -> torch.Tensor:
        return self.target_ids(self.draft_logits(states).argmax(dim=-1))

    def draft_topk(self, states: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(log-probs [R, k], target ids [R, k]) of the draft's k likeliest tokens (tree drafts)."""
        logp, ids = self.draft_logits(states).float().log_softmax(dim=-1).topk(k, dim=-1)
        return logp, self.target_ids(ids)

    def kv_layout(self) -> Tuple[int, int]:
        """(KV heads on this rank, head dim) of its one attention layer's cache."""
        return self.num_kv_heads, self.head_dim

    def load_named(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Loads checkpoint tensors (already renamed to this module's names); all required.
        Under TP each rank keeps its slice of the layer's split projections, as the target's."""
        targets = checkpoint_targets(self)
        loaded = load_named_tensors(targets, weights, lambda name: False, type(self).__name__,
                                    checkpoint_slices(self))
        missing = sorted(set(targets) - loaded - set(self.optional_names()))
        if missing:
            raise ValueError(f"the draft checkpoint lacks tensors {type(self).__name__} needs: "
                             f"{', '.join(missing[:5])}")

    def optional_names(self) -> Tuple[str, ...]:
        return ()


class EagleLayer(LlamaDecoderLayer):
    """A Llama layer; EAGLE's layer 0 has no input norm (the fc output goes straight in)."""

    def __init__(self, hf_config, layer_id: int):
        super().__init__(hf_config, layer_id, LlamaAttention)
        if layer_id == 0:
            del self.input_layernorm

    def forward(self, hidden, residual, cos, sin, ctx):
        if residual is not None:
            return super().forward(hidden, residual, cos, sin, ctx)
        proj = self.self_attn.qkv_proj
        out = self.self_attn(linear(hidden, proj.weight, proj.bias), cos, sin, ctx)
        return self.mlp(out, hidden, self.post_attention_layernorm)


class EagleDraft(DraftModel):
    def __init__(self, config, target: nn.Module, dtype: torch.dtype):
        super().__init__(target)
        hidden = config.hidden_size
        with default_dtype(dtype):
            # EAGLE's fc has a bias (nn.Linear's default, as SGLang builds it)
            self.fc = nn.Linear(2 * hidden, hidden, bias=bool(getattr(config, "bias", True)))
            self.layers = nn.ModuleList(EagleLayer(config, i) for i in range(config.num_hidden_layers))
            self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))
        self.num_kv_heads, self.head_dim = self.layers[0].self_attn.num_kv_heads, head_dim_of(config)
        if config.num_hidden_layers != 1:
            raise ValueError("speculative_draft_model_path: EAGLE heads with "
                             f"{config.num_hidden_layers} layers are not supported (one layer)")

    def optional_names(self):
        return ("fc.bias",)  # some heads were trained without one: zero then

    def forward(self, input_ids, positions, ctx: ForwardContext, hidden: torch.Tensor) -> State:
        x = linear(torch.cat([self.embed(input_ids), hidden.to(self.fc.weight.dtype)], dim=-1),
                   self.fc.weight, self.fc.bias)
        cos, sin = self.rotary_emb(positions)
        x, residual = self.layers[0](x, None, cos, sin, ctx)
        out = x + residual
        return out, out


class Eagle3Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self_attn = LlamaAttention(config, 0)
        attn = self.self_attn
        # the attention reads [embeds | hidden], twice the width; under TP the same rows
        attn.qkv_proj = FusedLinear(2 * config.hidden_size, {"q_proj": attn.q_size, "k_proj": attn.kv_size,
                                                             "v_proj": attn.kv_size}, bias=False,
                                    slices=attn.qkv_proj.tp_slices)
        self.mlp = LlamaMLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.hidden_norm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(self, embeds, hidden, cos, sin, ctx):
        x = torch.cat([self.input_layernorm(embeds), self.hidden_norm(hidden)], dim=-1)
        out = self.self_attn(linear(x, self.self_attn.qkv_proj.weight), cos, sin, ctx)
        return self.mlp(out, hidden, self.post_attention_layernorm)


class Eagle3Draft(DraftModel):
    def __init__(self, config, target: nn.Module, dtype: torch.dtype):
        super().__init__(target)
        if config.num_hidden_layers != 1:
            raise ValueError("speculative_draft_model_path: EAGLE3 heads with "
                             f"{config.num_hidden_layers} layers are not supported (one layer)")
        hidden = config.hidden_size
        target_hidden = getattr(config, "target_hidden_size", None) or hidden
        self.draft_vocab_size = getattr(config, "draft_vocab_size", None)
        with default_dtype(dtype):
            self.fc = nn.Linear(3 * target_hidden, hidden, bias=bool(getattr(config, "bias", False)))
            self.midlayer = Eagle3Layer(config)
            self.norm = RMSNorm(hidden, config.rms_norm_eps)
            self.rotary_emb = RotaryEmbedding(config, head_dim_of(config))
            self.lm_head = nn.Linear(hidden, self.draft_vocab_size, bias=False) \
                if self.draft_vocab_size else None
        self.register_buffer("d2t", torch.zeros(self.draft_vocab_size or 0, dtype=torch.int64))
        self.num_kv_heads, self.head_dim = self.midlayer.self_attn.num_kv_heads, head_dim_of(config)
        self.aux_layers = aux_layers(config, target.config.num_hidden_layers)
        if not isinstance(getattr(target, "model", None), LlamaModel):  # where the capture hook is
            raise ValueError(f"speculative_algorithm EAGLE3: {type(target).__name__} does not "
                             "expose its layers' hidden states (Llama-family decoders do)")

    def forward(self, input_ids, positions, ctx: ForwardContext, hidden: torch.Tensor) -> State:
        hidden = hidden.to(self.fc.weight.dtype)
        if hidden.shape[-1] != self.fc.out_features:  # the target's three layers: project
            hidden = linear(hidden, self.fc.weight, self.fc.bias)
        cos, sin = self.rotary_emb(positions)
        x, residual = self.midlayer(self.embed(input_ids), hidden, cos, sin, ctx)
        return self.norm(x, residual)  # (normed for the head, the pre-norm stream fed back)

    def draft_logits(self, states: torch.Tensor) -> torch.Tensor:
        if self.lm_head is None:
            return super().draft_logits(states)
        return linear(states, self.lm_head.weight)

    def target_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return ids if self.lm_head is None else ids + self.d2t[ids]

    def load_named(self, weights):
        def own():
            for name, tensor in weights:
                if name == "d2t":
                    self.d2t.copy_(tensor[:] if not isinstance(tensor, torch.Tensor) else tensor)
                elif name not in ("t2d", "embed_tokens.weight") and not (
                        name == "lm_head.weight" and self.lm_head is None):
                    yield name, tensor
        super().load_named(own())


def aux_layers(config, num_target_layers: int) -> Tuple[int, ...]:
    """The target layers whose input stream EAGLE3 reads: the head's eagle_config names them
    (as layer outputs, hence + 1), else low / middle / high as SGLang picks them."""
    ids = (getattr(config, "eagle_config", None) or {}).get("eagle_aux_hidden_state_layer_ids")
    n = num_target_layers
    layers = tuple(i + 1 for i in ids) if ids else (min(2, n - 1), n // 2, max(n - 3, 0))
    if len(layers) != 3 or not all(0 <= i < n for i in layers):
        raise ValueError(f"speculative_draft_model_path: the EAGLE3 head reads target layers "
                         f"{layers}; the target has {n} (three, each below {n})")
    return layers


class NextNDraft(DraftModel):
    """DeepSeek's MTP layer, built from the target's own config and `mtp_weights`."""

    def __init__(self, target: nn.Module, dtype: torch.dtype):
        super().__init__(target)
        config = target.config
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.layer_index = config.num_hidden_layers  # model.layers.<this> in the checkpoint
        with default_dtype(dtype):
            self.enorm = RMSNorm(hidden, eps)
            self.hnorm = RMSNorm(hidden, eps)
            self.eh_proj = nn.Linear(2 * hidden, hidden, bias=False)
            # the layer routes as the target's layer of that index would (MoE)
            self.layer = target.layer_cls(config, self.layer_index, target.attention_cls)
            self.shared_head = nn.Module()
            self.shared_head.norm = RMSNorm(hidden, eps)
        self.layer.self_attn.layer_id = 0  # the draft pool's only layer
        self.num_kv_heads, self.head_dim = target.num_kv_heads, target.head_dim
        self.sync_from_target()

    def forward(self, input_ids, positions, ctx: ForwardContext, hidden: torch.Tensor) -> State:
        x = torch.cat([self.enorm(self.embed(input_ids)), self.hnorm(hidden)], dim=-1)
        x = linear(x, self.eh_proj.weight)
        cos, sin = self.target.model.rotary_emb(positions)
        x, residual = self.layer(x, None, cos, sin, ctx)
        out, _ = self.shared_head.norm(x, residual)
        return out, out

    def sync_from_target(self) -> None:
        """(Re)loads the MTP layer from the target's mtp_weights: at start and after every
        weight update of the target (its checkpoint carries the layer)."""
        prefix = f"model.layers.{self.layer_index}."
        names = {name: t for name, t in self.target.mtp_weights.items() if name.startswith(prefix)}
        if not names:
            raise ValueError("speculative_algorithm NEXTN: the checkpoint has no MTP layer "
                             f"(model.layers.{self.layer_index}.*)")
        own = ("enorm.", "hnorm.", "eh_proj.", "shared_head.norm.")
        renamed = []
        for name, tensor in names.items():
            rest = name[len(prefix):]
            if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue  # copies of the target's embeddings and head, which it uses
            renamed.append((rest if rest.startswith(own) else f"layer.{rest}", tensor))
        self.load_named(renamed)


def load_draft_model(algorithm: str, path: Optional[str], target: nn.Module, dtype: torch.dtype,
                     device: torch.device) -> DraftModel:
    """The draft model of `algorithm`, on `device`, sharing the target's embeddings and head."""
    if getattr(target, "takes_images", False):
        # the heads read the target's text embeddings and 1-D rope positions; a VLM keeps its
        # embeddings under model.language_model and places tokens by M-RoPE (NGRAM needs neither)
        raise ValueError(f"speculative_algorithm {algorithm}: draft models for vision-language "
                         f"targets ({type(target).__name__}) are not supported; NGRAM is")
    with torch.device(device):
        if algorithm == "NEXTN":
            if not hasattr(target, "mtp_weights"):
                raise ValueError("speculative_algorithm NEXTN needs a DeepSeek-V2/V3 checkpoint "
                                 f"with an MTP layer, not {type(target).__name__}")
            return NextNDraft(target, dtype).eval()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path)
        archs = list(getattr(config, "architectures", None) or [])
        cls = Eagle3Draft if algorithm == "EAGLE3" else EagleDraft
        expected = "LlamaForCausalLMEagle3" if algorithm == "EAGLE3" else "LlamaForCausalLMEagle"
        if archs and expected not in archs:
            raise ValueError(f"speculative_draft_model_path: {algorithm} expects a {expected} "
                             f"checkpoint, {path} is {archs}")
        try:
            model = cls(config, target, dtype)
        except ValueError as e:  # a head the TP ranks cannot split (its heads, its MLP)
            if str(e).startswith("speculative_"):
                raise
            raise ValueError(f"speculative_draft_model_path: the head at {path}: {e}") from e
    def renamed():
        for name, tensor in iterate_checkpoint(path):
            name = re.sub(r"^model\.", "", name)
            if algorithm == "EAGLE" and name in ("embed_tokens.weight", "lm_head.weight"):
                continue  # the target's are used
            yield name, tensor

    if algorithm == "EAGLE" and model.fc.bias is not None:
        with torch.no_grad():
            model.fc.bias.zero_()
    model.load_named(renamed())
    return model.eval()

