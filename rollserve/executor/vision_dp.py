"""SGLang's --mm-enable-dp-encoder: under tensor parallelism the vision tower is whole on every
rank, so instead of every rank encoding every new image, each encodes a share of them and the
ranks exchange the features (one all-gather padded to the largest share).

Every rank calls this with the same images in the same order (they run the same batches with
the same feature cache), so every rank computes the same owner for each image without any
exchange: the largest images first, each to the rank with the fewest patches so far.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from rollserve.executor.models.qwen2_vl_vision import merged_tokens
from rollserve.executor.parallel_state import all_gather_rows, tp_rank, tp_size
from rollserve.kernels.dispatch import host_to_device


def encode(model, items: Sequence, device: torch.device) -> List[torch.Tensor]:
    """Merged features of `items` (core.multimodal.ImageItem) on this rank, in one forward."""
    pixels = torch.from_numpy(np.concatenate([i.pixel_values for i in items]))
    with torch.inference_mode():
        return model.encode_images(host_to_device(pixels, device), [tuple(i.grid_thw) for i in items])


def owners(items: Sequence, ranks: int) -> List[int]:
    """The rank that encodes each image: greedy by patch count, largest first (ties: lowest
    index, lowest rank), so the ranks' shares of vision work are close."""
    load = [0] * ranks
    out = [0] * len(items)
    for i in sorted(range(len(items)), key=lambda i: -int(np.prod(items[i].grid_thw))):
        rank = load.index(min(load))
        out[i] = rank
        load[rank] += int(np.prod(items[i].grid_thw))
    return out


def encode_over_ranks(model, items: Sequence, device: torch.device) -> List[torch.Tensor]:
    """Every item's merged features on every rank, each image encoded by one rank only."""
    ranks = tp_size()
    if ranks == 1:
        return encode(model, items, device)
    owner = owners(items, ranks)
    rows = [merged_tokens(tuple(i.grid_thw), model.spatial_merge_size) for i in items]
    mine = [items[i] for i in range(len(items)) if owner[i] == tp_rank()]
    local = torch.cat(encode(model, mine, device)) if mine else \
        torch.zeros(0, model.text_config.hidden_size, dtype=model.dtype, device=device)
    sizes = [sum(n for n, o in zip(rows, owner) if o == r) for r in range(ranks)]
    with torch.inference_mode():
        every, _ = all_gather_rows(local.contiguous(), sizes)
    order = [i for r in range(ranks) for i in range(len(items)) if owner[i] == r]
    out: List[torch.Tensor] = [torch.empty(0)] * len(items)
    for i, feats in zip(order, every.split([rows[i] for i in order])):
        out[i] = feats
    return out
