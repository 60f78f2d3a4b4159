"""Tokenizer loading, EOS ids and chat templates (shared by every process)."""

from __future__ import annotations

import json
import os
from typing import FrozenSet, List, Optional

from transformers import AutoTokenizer

# Built-in chat templates selectable by name with --chat-template.
BUILTIN_CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
        " + '<|im_end|>' + '\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "llama-2": (
        "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<<SYS>>\n' + "
        "message['content'] + '\n<</SYS>>\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' + "
        "message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' }}{% endif %}"
        "{% endfor %}"
    ),
    "plain": (
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    ),
}


def load_tokenizer(path: str, chat_template: Optional[str] = None, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if chat_template:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    return tokenizer


def resolve_chat_template(name_or_path: str) -> str:
    if name_or_path in BUILTIN_CHAT_TEMPLATES:
        return BUILTIN_CHAT_TEMPLATES[name_or_path]
    if os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            return f.read()
    raise ValueError(
        f"chat_template: {name_or_path!r} is neither a built-in template "
        f"({', '.join(BUILTIN_CHAT_TEMPLATES)}) nor a file")


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
