"""Model registry: the architecture named in config.json -> our model class."""

from __future__ import annotations

from typing import Dict, Type

from torch import nn

from rollserve.executor.models.bert import BertModel
from rollserve.executor.models.decoder_embedding import (LlamaEmbeddingModel, Qwen2EmbeddingModel,
                                                       Qwen3EmbeddingModel)
from rollserve.executor.models.deepseek_v2 import DeepseekV2ForCausalLM, DeepseekV3ForCausalLM
from rollserve.executor.models.llama import LlamaForCausalLM
from rollserve.executor.models.qwen2 import Qwen2ForCausalLM
from rollserve.executor.models.qwen2_vl import (Qwen2_5_VLForConditionalGeneration,
                                                Qwen2VLForConditionalGeneration)
from rollserve.executor.models.mixtral import MixtralForCausalLM
from rollserve.executor.models.qwen3 import Qwen3ForCausalLM
from rollserve.executor.models.qwen3_moe import Qwen3MoeForCausalLM
from rollserve.executor.models.sequence_classification import (LlamaForSequenceClassification,
                                                             Qwen2ForSequenceClassification,
                                                             Qwen3ForSequenceClassification)

MODEL_REGISTRY: Dict[str, Type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
    "MixtralForCausalLM": MixtralForCausalLM,
    "DeepseekV2ForCausalLM": DeepseekV2ForCausalLM,
    "DeepseekV3ForCausalLM": DeepseekV3ForCausalLM,
    "Qwen2VLForConditionalGeneration": Qwen2VLForConditionalGeneration,
    "Qwen2_5_VLForConditionalGeneration": Qwen2_5_VLForConditionalGeneration,
}

# Embedding and classification (reward) models; their pooling is chosen by
# rollserve.executor.pooling_model.pooling_spec.
POOLING_MODEL_REGISTRY: Dict[str, Type[nn.Module]] = {
    "BertModel": BertModel,
    "LlamaModel": LlamaEmbeddingModel,
    "MistralModel": LlamaEmbeddingModel,
    "Qwen2Model": Qwen2EmbeddingModel,
    "Qwen3Model": Qwen3EmbeddingModel,
    "LlamaForSequenceClassification": LlamaForSequenceClassification,
    "Qwen2ForSequenceClassification": Qwen2ForSequenceClassification,
    "Qwen3ForSequenceClassification": Qwen3ForSequenceClassification,
}
# A causal LM checkpoint served with --is-embedding runs as this embedding model.
EMBEDDING_MODEL_OF_CAUSAL_LM = {"LlamaForCausalLM": "LlamaModel", "MistralForCausalLM": "MistralModel",
                                "Qwen2ForCausalLM": "Qwen2Model", "Qwen3ForCausalLM": "Qwen3Model"}

# For configs that name no architecture (e.g. converted from GGUF before saving).
_ARCHITECTURE_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                               "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                               "qwen3_moe": "Qwen3MoeForCausalLM", "mixtral": "MixtralForCausalLM",
                               "deepseek_v2": "DeepseekV2ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
                               "qwen2_vl": "Qwen2VLForConditionalGeneration",
                               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}


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


def get_pooling_model_class(hf_config) -> Type[nn.Module]:
    """The embedding / classification class for a config (a causal LM maps to its embedding model)."""
    architectures = list(getattr(hf_config, "architectures", None) or [])
    for name in architectures:
        name = EMBEDDING_MODEL_OF_CAUSAL_LM.get(name, name)
        if name in POOLING_MODEL_REGISTRY:
            return POOLING_MODEL_REGISTRY[name]
    raise ValueError(f"architecture(s) {architectures} have no embedding or classification "
                     f"implementation; rollserve supports {sorted(POOLING_MODEL_REGISTRY)} and, "
                     f"with --is-embedding, {sorted(EMBEDDING_MODEL_OF_CAUSAL_LM)}")
