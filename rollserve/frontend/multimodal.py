"""Images of a request, from what the client sent to what the scheduler needs: decoded (data URL,
raw base64, file:// URL or local path; remote URLs refused: the server fetches nothing),
preprocessed by the model's own transformers image processor, the prompt's image placeholders
expanded to one image token per merged patch, hashed, and given their M-RoPE positions.

Placeholders: one image token (`<|image_pad|>`, usually inside <|vision_start|>...<|vision_end|>)
per image, in order, in the text or the input_ids. input_ids whose image tokens are already
expanded (the `expanded_input_ids` an earlier answer returned) are taken as they are.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from rollserve.core.multimodal import ImageItem, MultimodalInputs, image_pad_value, mrope_positions
from rollserve.core.sampling_params import InvalidRequest

DEFAULT_MAX_IMAGES = 16  # per request, unless --limit-mm-data-per-request says otherwise


def model_takes_images(hf_config) -> bool:
    return getattr(hf_config, "vision_config", None) is not None and \
        getattr(hf_config, "image_token_id", None) is not None


class ImageProcessor:
    def __init__(self, model_path: str, hf_config, tokenizer, max_images: int = DEFAULT_MAX_IMAGES):
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(model_path)
        self.image_token_id = int(hf_config.image_token_id)
        self.merge = int(hf_config.vision_config.spatial_merge_size)
        start = getattr(hf_config, "vision_start_token_id", None)
        end = getattr(hf_config, "vision_end_token_id", None)
        pieces = [start, self.image_token_id, end]
        self.placeholder = "".join(tokenizer.convert_ids_to_tokens([t for t in pieces if t is not None]))
        self.max_images = max_images

    def process(self, ids: List[int], images: Sequence[Any], field: str,
                ids_field: str) -> Tuple[List[int], MultimodalInputs]:
        """(the prompt with its image tokens expanded, the images as the scheduler needs them)."""
        if len(images) > self.max_images:
            raise InvalidRequest(field, f"{len(images)} images in one request; the limit is "
                                        f"{self.max_images} (--limit-mm-data-per-request)")
        pil = [load_image(src, f"{field}[{i}]" if len(images) > 1 else field)
               for i, src in enumerate(images)]
        try:
            out = self.processor(images=pil, return_tensors="np")
        except Exception as e:  # the processor rejects the image (e.g. too small, odd aspect)
            raise InvalidRequest(field, f"the image processor rejected the image: {e}") from e
        grids = [tuple(int(v) for v in g) for g in out["image_grid_thw"]]
        counts = [t * h * w // self.merge ** 2 for t, h, w in grids]
        expanded, offsets = self._expand(ids, counts, ids_field)
        patches = np.cumsum([0] + [t * h * w for t, h, w in grids])
        pixels = out["pixel_values"].astype(np.float32, copy=False)
        items = []
        for k, (grid, n, offset) in enumerate(zip(grids, counts, offsets)):
            values = np.ascontiguousarray(pixels[patches[k]:patches[k + 1]])
            digest = hashlib.blake2b(values.tobytes(), digest_size=8)
            digest.update(np.asarray(grid, dtype=np.int64).tobytes())
            items.append(ImageItem(int.from_bytes(digest.digest(), "little"), offset, n, grid, values))
        positions, delta = mrope_positions(len(expanded), [(i.offset, i.grid_thw) for i in items],
                                           self.merge)
        key = list(expanded)
        for item in items:
            key[item.offset:item.offset + item.num_tokens] = [image_pad_value(item.hash)] * item.num_tokens
        return expanded, MultimodalInputs(items, positions, delta, key)

    def _expand(self, ids: List[int], counts: List[int], field: str) -> Tuple[List[int], List[int]]:
        runs = _runs(ids, self.image_token_id)
        if len(runs) != len(counts):
            raise InvalidRequest(field, (
                f"the prompt has {len(runs)} image placeholders for {len(counts)} images; put one "
                f"{self.placeholder} where each image goes"))
        if all(length == n for (_, length), n in zip(runs, counts)):
            return list(ids), [start for start, _ in runs]  # already expanded
        if any(length != 1 for _, length in runs):
            raise InvalidRequest(field, "each image placeholder must be a single image token (or "
                                        "already expanded to exactly that image's token count)")
        out, offsets, prev = [], [], 0
        for (start, _), n in zip(runs, counts):
            out.extend(ids[prev:start])
            offsets.append(len(out))
            out.extend([self.image_token_id] * n)
            prev = start + 1
        out.extend(ids[prev:])
        return out, offsets


def _runs(ids: List[int], token: int) -> List[Tuple[int, int]]:
    """(start, length) of every run of `token` in ids."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == token:
            j = i
            while j < len(ids) and ids[j] == token:
                j += 1
            runs.append((i, j - i))
            i = j
        else:
            i += 1
    return runs


def load_image(source: Any, field: str):
    """A PIL RGB image from a data URL, file:// URL, local path or raw base64 string."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(source, str) or not source:
        raise InvalidRequest(field, "an image must be a non-empty string (data URL, base64, "
                                    "file:// URL or local path)")
    if source.startswith(("http://", "https://")):
        raise InvalidRequest(field, "remote image URLs are not fetched (this server has no "
                                    "network access); send a data: URL, base64 or a local path")
    if source.startswith("data:"):
        header, _, payload = source.partition(",")
        if ";base64" not in header:
            raise InvalidRequest(field, "a data URL image must be base64 (data:image/png;base64,...)")
        data = _b64(payload, field)
    elif source.startswith("file://") or os.path.isabs(source) or os.path.exists(source):
        path = source[len("file://"):] if source.startswith("file://") else source
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise InvalidRequest(field, f"cannot read the image file {path!r}: {e.strerror}") from e
    else:
        data = _b64(source, field)
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidRequest(field, f"cannot decode the image: {e}") from e


def _b64(payload: str, field: str) -> bytes:
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidRequest(field, "not a decodable image: not a data URL, file path or valid "
                                    "base64") from e


def images_of(value: Optional[Any], n: int, field: str = "image_data") -> List[List[Any]]:
    """SGLang's image_data per prompt: one image or a list for a single prompt; for a batch a
    list with one entry (an image, a list of images or None) per prompt."""
    if value is None:
        return [[] for _ in range(n)]
    if n == 1 and not (isinstance(value, list) and len(value) == 1 and isinstance(value[0], list)):
        return [value if isinstance(value, list) else [value]]
    if not isinstance(value, list) or len(value) != n:
        raise InvalidRequest(field, f"a batch of {n} prompts needs a list of {n} entries "
                                    "(an image, a list of images or null each)")
    return [[] if v is None else (v if isinstance(v, list) else [v]) for v in value]


def image_processor_for(args, tokenizer) -> Optional[ImageProcessor]:
    """The ImageProcessor of a VLM served with `args` (a ServerArgs), None for text models."""
    import json

    from transformers import AutoConfig

    if getattr(args, "is_embedding", False):
        return None
    hf_config = AutoConfig.from_pretrained(args.model_path, trust_remote_code=args.trust_remote_code)
    if not model_takes_images(hf_config):
        return None
    limit = DEFAULT_MAX_IMAGES
    if args.limit_mm_data_per_request:
        try:
            limit = int(json.loads(args.limit_mm_data_per_request).get("image", limit))
        except (ValueError, AttributeError, TypeError) as e:
            raise ValueError("--limit-mm-data-per-request must be JSON like '{\"image\": 4}', got "
                             f"{args.limit_mm_data_per_request!r}") from e
    return ImageProcessor(args.model_path, hf_config, tokenizer, limit)


def attach_images(processor: Optional[ImageProcessor], item, ids: List[int], ids_field: str,
                  max_input_len: int) -> List[int]:
    """Processes item.images into item.mm_inputs; returns the prompt with expanded image tokens."""
    if processor is None:
        raise InvalidRequest("image_data", "this model takes no images (a text-only model)")
    expanded, mm = processor.process(ids, item.images, "image_data", ids_field)
    if len(expanded) > max_input_len:
        raise InvalidRequest("image_data", (
            f"the prompt with its images is {len(expanded)} tokens ({mm.image_token_count()} for "
            f"the images), over the maximum input length {max_input_len}"))
    item.mm_inputs = mm
    return expanded
