"""OpenAI chat content parts -> one message text: `text` parts joined by newlines, each
`image_url` part replaced by the model's image placeholder (<|vision_start|><|image_pad|>
<|vision_end|> for Qwen2-VL) and its URL collected, in order, for /generate's image_data.
The URL itself (data URL or local file; remote URLs get a 400) is read by
frontend/multimodal.py."""

from __future__ import annotations

from typing import List, Optional

from rollserve.api.protocol import ApiError


def message_text(content, index: int, images: Optional[List[str]], processor) -> str:
    """processor: the tokenizer manager's ImageProcessor, None for a text-only model."""
    if content is None or isinstance(content, str):
        return content or ""
    where = f"messages[{index}].content"
    texts = []
    for part in content:
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url":
            if processor is None or images is None:
                raise ApiError(400, f"{where}: image_url parts need a vision-language model; "
                                    "this one takes text only", where)
            url = part.image_url.get("url") if isinstance(part.image_url, dict) else part.image_url
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{where}: an image_url part needs image_url.url (a data URL "
                                    "or a local file)", where)
            images.append(url)
            texts.append(processor.placeholder)
        else:
            raise ApiError(400, f"{where}: content parts of type {part.type!r} are not supported "
                                "(text and image_url only)", where)
    return "\n".join(texts)
