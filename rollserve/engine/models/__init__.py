"""Model registry: the architecture named in config.json -> our model class."""

from __future__ import annotations

from typing import Dict, Type

from torch import nn

from rollserve.engine.models.llama import LlamaForCausalLM
from rollserve.engine.models.qwen2 import Qwen2ForCausalLM
from rollserve.engine.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: Dict[str, Type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}

# For configs that name no architecture (e.g. converted from GGUF before saving).
_ARCHITECTURE_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}


def get_model_class(hf_config) -> Type[nn.Module]:
    architectures = list(getattr(hf_config, "architectures", None) or [])
    if not architectures:
        model_type = getattr(hf_config, "model_type", None)
        architectures = [_ARCHITECTURE_BY_MODEL_TYPE.get(model_type, f"<model_type {model_type!r}>")]
    for name in architectures:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ValueError(f"unsupported architecture(s) {architectures}; rollserve supports "
                     f"{sorted(MODEL_REGISTRY)}")
