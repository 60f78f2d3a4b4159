"""Images of one request, as the front end hands them to the scheduler (pickled, numpy only).

The prompt keeps the model's image token at every image position (so logprobs, lengths and
the token ids returned to clients are the model's own); the prefix cache keys those positions
by the image's content hash instead (`radix_key`), so two different images never share
cached KV and the same image (a GRPO group's) always does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Sequence, Tuple

import numpy as np

Grid = Tuple[int, int, int]

# radix-key values of image tokens lie below every real token id (ids are >= 0)
_PAD_SPACE = 1 << 62


def image_pad_value(image_hash: int) -> int:
    return -1 - (image_hash % _PAD_SPACE)


@dataclass
class ImageItem:
    hash: int  # of the decoded pixels (64 bits): the feature cache's and the radix key's key
    offset: int  # index of its first image token in the prompt
    num_tokens: int  # language-model tokens it becomes (after the patch merger)
    grid_thw: Grid  # in patches, as the image processor reports it
    pixel_values: np.ndarray  # [patches, C*T*P*P] float32, from the HF image processor


@dataclass
class MultimodalInputs:
    images: List[ImageItem]
    mrope_positions: np.ndarray  # [3, prompt length] int64: (t, h, w) position of each token
    mrope_delta: int  # a token at index i >= prompt length sits at position i + delta
    radix_key: List[int] = field(default_factory=list)  # the prompt, image tokens as pad values

    def image_token_count(self) -> int:
        return sum(item.num_tokens for item in self.images)


def mrope_positions(prompt_len: int, spans: Sequence[Tuple[int, Grid]], merge: int
                    ) -> Tuple[np.ndarray, int]:
    """Qwen2-VL's 3-D rope positions: text tokens count up by one in all three streams; an
    image of merged grid (t, h', w') starting where the text stopped at p takes (p + frame,
    p + row, p + column), and the text after it resumes at p + max(h', w').

    spans: (offset of the image's first token, grid_thw in patches), in prompt order.
    Returns ([3, prompt_len] int64, delta for the tokens after the prompt).
    """
    out = np.empty((3, prompt_len), dtype=np.int64)
    index, position = 0, 0
    for offset, (t, h, w) in spans:
        text = offset - index
        out[:, index:offset] = position + np.arange(text)
        position += text
        gh, gw = h // merge, w // merge
        frame, row, col = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        n = t * gh * gw
        out[0, offset:offset + n] = position + frame.reshape(-1)
        out[1, offset:offset + n] = position + row.reshape(-1)
        out[2, offset:offset + n] = position + col.reshape(-1)
        position += max(gh, gw)  # as the reference does, also for t > 1
        index = offset + n
    out[:, index:] = position + np.arange(prompt_len - index)
    top = int(out.max()) + 1 if prompt_len else 0
    return out, top - prompt_len
