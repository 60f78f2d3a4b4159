"""Megatron-style tensor-parallel layers (executor/parallel_state.py says which rank this is).

* column-parallel: a projection's output rows are split over the ranks (q|k|v and gate|up,
  FusedLinear with `slices`); each rank computes its heads / its part of the MLP alone;
* row-parallel (`RowParallelLinear`): the input columns are split; each rank's product is a
  partial sum, and one all-reduce per attention block and per MLP block adds them up;
* vocab-parallel (`VocabParallelEmbedding`, `gather_vocab_logits`): each rank holds a run
  of ceil(V / tp) vocabulary rows; the embedding all-reduces (each token lives on one rank),
  the LM head all-gathers its logits.

Each parameter says which part of the checkpoint tensor it holds (`CheckpointSlice`), so
the loader reads only that part from the safetensors shard, and the weight-sync checks
still compare against the checkpoint's full shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from rollserve.executor.parallel_state import all_gather_last_dim, all_reduce, padded_share, tp_rank, tp_size
from rollserve.kernels.linear import linear


@dataclass(frozen=True)
class CheckpointSlice:
    """A parameter (or a block of its rows) holds checkpoint[start : start + length] along
    `dim` of a tensor that is `full` long there; a padded parameter may be longer."""
    dim: int
    start: int
    length: int
    full: int

    def full_shape(self, local: Tuple[int, ...]) -> Tuple[int, ...]:
        shape = list(local)
        shape[self.dim] = self.full
        return tuple(shape)

    def take(self, tensor) -> torch.Tensor:
        """This slice of `tensor` (a torch tensor, or a safetensors slice read lazily)."""
        index = (slice(None),) * self.dim + (slice(self.start, self.start + self.length),)
        return tensor[index]


def shape_of(tensor) -> Tuple[int, ...]:
    return tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else tuple(tensor.get_shape())


def column_slices(parts: Dict[str, Tuple[int, int]], bias: bool) -> Dict[str, CheckpointSlice]:
    """FusedLinear's slices: {projection: (this rank's start row, rows)} with the full row
    counts implied (rows * tp_size); keys as the checkpoint names them relative to the parent."""
    out = {}
    for name, (start, rows) in parts.items():
        full = rows * tp_size()
        out[f"{name}.weight"] = CheckpointSlice(0, start, rows, full)
        if bias:
            out[f"{name}.bias"] = CheckpointSlice(0, start, rows, full)
    return out


class RowParallelLinear(nn.Linear):
    """y = x W^T + b where x (and W's columns) are split over the ranks: a partial product
    per rank, summed by one all-reduce; the bias is added once, after it."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__(in_features // tp_size(), out_features, bias=bias)
        start = tp_rank() * self.in_features
        self.tp_slices = {} if tp_size() == 1 else {
            "weight": CheckpointSlice(1, start, self.in_features, in_features)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tp_size() == 1:
            return linear(x, self.weight, self.bias)
        out = all_reduce(linear(x, self.weight))
        return out if self.bias is None else out + self.bias


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + valid) of the embedding on this rank, padded to ceil(V / tp)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.num_embeddings = num_embeddings
        self.start, per, self.valid = padded_share(num_embeddings, tp_rank(), tp_size())
        self.weight = nn.Parameter(torch.zeros(per, embedding_dim))
        self.tp_slices = {"weight": CheckpointSlice(0, self.start, self.valid, num_embeddings)}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.start
        outside = (local < 0) | (local >= self.valid)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        return all_reduce(out.masked_fill(outside.unsqueeze(-1), 0))


def vocab_parallel_head(vocab_size: int, hidden_size: int, bias: bool = False) -> nn.Module:
    """The untied LM head: nn.Linear on one rank, this rank's vocabulary rows under TP."""
    if tp_size() == 1:
        return nn.Linear(hidden_size, vocab_size, bias=bias)
    return VocabParallelEmbedding(vocab_size, hidden_size)  # the same rows, read as a matmul


def embedding(vocab_size: int, hidden_size: int) -> nn.Module:
    return nn.Embedding(vocab_size, hidden_size) if tp_size() == 1 else \
        VocabParallelEmbedding(vocab_size, hidden_size)


def gather_vocab_logits(logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Every rank's [T, ceil(V / tp)] logits -> the full [T, V] on every rank."""
    if tp_size() == 1:
        return logits
    return all_gather_last_dim(logits)[..., :vocab_size]


def require_tensor_parallel(model_cls: type, hf_config) -> None:
    """Refuses a model whose layers are not split for TP (MoE, MLA, encoders) before it is built."""
    if tp_size() > 1 and not getattr(model_cls, "supports_tensor_parallel", False):
        raise ValueError(f"{model_cls.__name__} does not support tensor parallelism yet "
                         f"(tp_size {tp_size()}); serve it with --tp-size 1")


def local_slices(module: nn.Module) -> Optional[Dict[str, CheckpointSlice]]:
    return getattr(module, "tp_slices", None) or None
