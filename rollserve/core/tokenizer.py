"""Tokenizer loading and EOS ids (shared by every process); chat templates in chat_templates.py."""

from __future__ import annotations

import json
import os
from typing import FrozenSet, List, Optional

from transformers import AutoTokenizer

from rollserve.core.chat_templates import resolve_chat_template


def load_tokenizer(path: str, chat_template: Optional[str] = None, trust_remote_code: bool = False,
                   hf_chat_template_name: Optional[str] = None):
    """The tokenizer at `path`; `chat_template` (a built-in name or a file, see
    core/chat_templates.py) replaces its own, `hf_chat_template_name` picks one of the
    named templates a tokenizer may ship (SGLang's --hf-chat-template-name)."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if hf_chat_template_name:
        tokenizer.chat_template = named_chat_template(tokenizer, hf_chat_template_name)
    if chat_template:
        tokenizer.chat_template = resolve_chat_template(chat_template).jinja
    return tokenizer


def named_chat_template(tokenizer, name: str) -> str:
    templates = tokenizer.chat_template
    if isinstance(templates, dict) and name in templates:
        return templates[name]
    have = sorted(templates) if isinstance(templates, dict) else (["default"] if templates else [])
    if name == "default" and isinstance(templates, str):
        return templates
    raise ValueError(f"hf_chat_template_name: the tokenizer has no chat template named {name!r} "
                     f"(it has: {', '.join(have) or 'none'})")


def eos_token_ids(model_path: str, tokenizer) -> FrozenSet[int]:
    """EOS ids from generation_config.json, config.json and the tokenizer, merged."""
    ids: List[int] = []
    for name in ("generation_config.json", "config.json"):
        file = os.path.join(model_path, name)
        if os.path.isfile(file):
            with open(file) as f:
                value = json.load(f).get("eos_token_id")
            ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return frozenset(int(i) for i in ids)
