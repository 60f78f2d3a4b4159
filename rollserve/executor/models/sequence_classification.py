"""Reward / classification models: our decoder with transformers' `score` head
(Linear(hidden, num_labels, bias=False)) applied to the last token's hidden state.

transformers scores the last token that is not pad_token_id; the tokenizer manager
drops trailing pad tokens before the request reaches the engine, so the last token
the engine computes is that one (a causal model's hidden state at a position does
not depend on what follows it).
"""

from __future__ import annotations

from torch import nn

from rollserve.executor.models.decoder_embedding import (LlamaEmbeddingModel, Qwen2EmbeddingModel,
                                                       Qwen3EmbeddingModel)


class _ScoreHead:
    def make_head(self, hf_config) -> nn.Module:
        return nn.Linear(hf_config.hidden_size, hf_config.num_labels, bias=False)


class LlamaForSequenceClassification(_ScoreHead, LlamaEmbeddingModel):
    pass


class Qwen2ForSequenceClassification(_ScoreHead, Qwen2EmbeddingModel):
    pass


class Qwen3ForSequenceClassification(_ScoreHead, Qwen3EmbeddingModel):
    pass
