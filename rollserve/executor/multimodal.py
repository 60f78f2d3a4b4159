"""Images in the prefill batch: encodes them (once per image, cached by content hash) and hands
the model, per forward, the rows of the image tokens, their features and every token's 3-D
rope position (ForwardContext.mm).

A prefill chunk (or a prompt whose prefix came from the cache) may cover only part of an
image: its rows take exactly the matching slice of that image's features, so chunk
boundaries and cache hits may fall anywhere. The feature cache is keyed by (hash, weights
generation): a weight write makes every cached feature stale.

Under tensor parallelism every rank runs this on the same batches (tp_sync.py) with its own
whole vision tower, so the ranks' feature caches hold the same images; with
--mm-enable-dp-encoder the ranks split the new images' encoding (vision_dp.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch

from rollserve.core.batch import ScheduleBatch
from rollserve.core.draft_tree import depths
from rollserve.executor.vision_dp import encode, encode_over_ranks
from rollserve.kernels.dispatch import host_to_device

DEFAULT_FEATURE_CACHE_BYTES = 256 << 20  # ~36 images of 1000 tokens at 7B's width, bf16


@dataclass
class MultimodalForward:
    positions: torch.Tensor  # [3, T] int64: every token's (t, h, w) rope position
    image_rows: torch.Tensor  # [I] int64: packed rows of the image tokens of this forward
    image_embeds: torch.Tensor  # [I, hidden]: their features, in the same order


class MultimodalRunner:
    def __init__(self, model, device: torch.device, num_request_rows: int,
                 cache_bytes: int = DEFAULT_FEATURE_CACHE_BYTES, split_encoder: bool = False):
        self.model = model
        self.split_encoder = split_encoder  # --mm-enable-dp-encoder: the TP ranks share the work
        self.device = device
        self.cache_bytes = cache_bytes
        self.cache: "OrderedDict[Tuple[int, int], torch.Tensor]" = OrderedDict()
        self.cached_bytes = 0
        self.images_encoded = 0  # images whose features were computed (here or split), for tests
        model.rope_deltas = torch.zeros(num_request_rows, dtype=torch.int64, device=device)

    @staticmethod
    def for_model(model, device: torch.device, num_request_rows: int,
                  split_encoder: bool = False) -> Optional["MultimodalRunner"]:
        return MultimodalRunner(model, device, num_request_rows, split_encoder=split_encoder) \
            if getattr(model, "takes_images", False) else None

    def prepare(self, batch: ScheduleBatch) -> Optional[MultimodalForward]:
        """None for a batch of decode steps only (the model reads the rope deltas); else the
        images and positions of this forward. Records each prefilling request's rope delta."""
        prefill = [e for e in batch.entries if not e.is_decode]
        if not prefill:
            return None
        rows = [e.req.req_pool_idx for e in prefill]
        deltas = [_mm(e.req).mrope_delta if _mm(e.req) else 0 for e in prefill]
        self.model.rope_deltas[host_to_device(torch.tensor(rows), self.device)] = \
            host_to_device(torch.tensor(deltas, dtype=torch.int64), self.device)
        positions, image_rows, pieces, offset = [], [], [], 0
        for entry in batch.entries:
            start, n, mm = entry.start, len(entry.tokens), _mm(entry.req)
            positions.append(_positions(mm, start, n, entry.tree_parents))
            for item in (mm.images if mm else ()):
                lo, hi = max(start, item.offset), min(start + n, item.offset + item.num_tokens)
                if lo < hi:
                    image_rows.append(np.arange(offset + lo - start, offset + hi - start))
                    pieces.append((item, lo - item.offset, hi - item.offset))
            offset += n
        features = self._features([item for item, _, _ in pieces])
        embeds = [features[item.hash][a:b] for item, a, b in pieces]
        hidden = self.model.text_config.hidden_size
        return MultimodalForward(
            positions=host_to_device(torch.from_numpy(np.concatenate(positions, axis=1)), self.device),
            image_rows=host_to_device(torch.from_numpy(np.concatenate(image_rows) if image_rows
                                                       else np.zeros(0, np.int64)), self.device),
            image_embeds=torch.cat(embeds) if embeds else torch.zeros(0, hidden, device=self.device))

    def _features(self, items) -> dict:
        """hash -> merged features of each image, encoding the uncached ones in one forward."""
        generation = self.model.weights_generation
        out, todo = {}, {}
        for item in items:
            key = (item.hash, generation)
            if key in self.cache:
                self.cache.move_to_end(key)
                out[item.hash] = self.cache[key]
            else:
                todo[item.hash] = item
        if todo:
            run = encode_over_ranks if self.split_encoder else encode
            encoded = run(self.model, list(todo.values()), self.device)
            self.images_encoded += len(todo)
            for (h, item), feats in zip(todo.items(), encoded):
                out[h] = feats
                self._remember((h, generation), feats)
        return out

    def _remember(self, key, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if size > self.cache_bytes:
            return
        stale = [k for k in self.cache if k[1] != key[1]]
        for k in stale:  # other weights' features are never read again
            self._forget(k)
        while self.cached_bytes + size > self.cache_bytes:
            self._forget(next(iter(self.cache)))
        self.cache[key] = feats
        self.cached_bytes += size

    def _forget(self, key) -> None:
        feats = self.cache.pop(key)
        self.cached_bytes -= feats.numel() * feats.element_size()

    def clear(self) -> None:
        self.cache.clear()
        self.cached_bytes = 0


def _mm(req):
    return getattr(req, "mm_inputs", None)


def _positions(mm, start: int, n: int, tree_parents=None) -> np.ndarray:
    """[3, n] rope positions of tokens start .. start + n of a request; a draft tree's rows
    (past the prompt) sit at start + their depth instead (core/draft_tree.py)."""
    if tree_parents is not None:
        at = start + np.asarray(depths(tree_parents), dtype=np.int64)
        return np.broadcast_to(at + (mm.mrope_delta if mm else 0), (3, n))
    if mm is None:
        return np.broadcast_to(np.arange(start, start + n, dtype=np.int64), (3, n))
    prompt = mm.mrope_positions
    end = start + n
    head = prompt[:, start:min(end, prompt.shape[1])]
    tail_from = max(start, prompt.shape[1])
    tail = np.arange(tail_from, end, dtype=np.int64) + mm.mrope_delta
    return np.concatenate([head, np.broadcast_to(tail, (3, tail.size))], axis=1)
