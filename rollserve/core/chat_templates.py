"""Chat templates selectable with --chat-template: SGLang's built-in names, a Jinja file
(Hugging Face's format), or a JSON file in SGLang's conversation format.

Every template ends up as Jinja, set on the tokenizer, so one code path
(tokenizer.apply_chat_template) renders all of them. A template may also carry stop
strings (SGLang's stop_str): chat requests stop on them as well as on their own `stop`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    jinja: str
    stop: Tuple[str, ...] = ()


@dataclass(frozen=True)
class _Roles:
    """A template as role prefixes and suffixes (the shape of SGLang's built-ins)."""

    prefix: Dict[str, str]
    suffix: Dict[str, str]
    generation_prompt: str
    bos: bool = False  # start with the tokenizer's BOS token
    default_system: Optional[str] = None  # used when the conversation brings none
    # Models without a system turn (Llama-2, Mistral, Gemma): the system text goes in front
    # of the first user message, wrapped in (before, after).
    system_in_user: Optional[Tuple[str, str]] = None


def _jinja(spec: _Roles) -> str:
    """Jinja for a role-prefix template; unknown roles (tool, ...) render as user turns."""
    lit = lambda d: json.dumps(d, ensure_ascii=False)  # JSON strings are Jinja literals too
    parts = ["{%- set prefix = " + lit(spec.prefix) + " -%}",
             "{%- set suffix = " + lit(spec.suffix) + " -%}"]
    if spec.bos:
        parts.append("{{- bos_token or '' -}}")
    if spec.default_system is not None:
        parts.append("{%- if not messages or messages[0]['role'] != 'system' -%}"
                     + _turn("'system'", lit(spec.default_system)) + "{%- endif -%}")
    turn = "{%- set content = message['content'] -%}" + _turn("message['role']", "content")
    if spec.system_in_user is not None:
        before, after = spec.system_in_user
        parts.append("{%- set ns = namespace(system=none) -%}")
        turn = ("{%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}"
                "{%- else -%}{%- set content = message['content'] -%}"
                "{%- if message['role'] == 'user' and ns.system is not none -%}"
                "{%- set content = " + lit(before) + " + ns.system + " + lit(after) + " + content -%}"
                "{%- set ns.system = none -%}{%- endif -%}"
                + _turn("message['role']", "content") + "{%- endif -%}")
    parts.append("{%- for message in messages -%}" + turn + "{%- endfor -%}")
    parts.append("{%- if add_generation_prompt -%}{{- " + lit(spec.generation_prompt)
                 + " -}}{%- endif -%}")
    return "".join(parts)


def _turn(role: str, content: str) -> str:
    role = f"({role} if {role} in prefix else 'user')"
    return "{{- prefix[" + role + "] + " + content + " + suffix[" + role + "] -}}"


def _same(prefix_of_role: Dict[str, str], suffix: str) -> Dict[str, str]:
    return {role: suffix for role in prefix_of_role}


_CHATML = {r: f"<|im_start|>{r}\n" for r in ("system", "user", "assistant")}
_LLAMA3 = {r: f"<|start_header_id|>{r}<|end_header_id|>\n\n" for r in ("system", "user", "assistant")}
_LLAMA4 = {r: f"<|header_start|>{r}<|header_end|>\n\n" for r in ("system", "user", "assistant")}
_GRANITE = {r: f"<|start_of_role|>{r}<|end_of_role|>" for r in ("system", "user", "assistant")}
_DEEPSEEK_EOS = "<｜end▁of▁sentence｜>"
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")

_BUILTIN: Dict[str, Tuple[_Roles, Tuple[str, ...]]] = {
    "chatml": (_Roles(_CHATML, _same(_CHATML, "<|im_end|>\n"), "<|im_start|>assistant\n"),
               ("<|im_end|>",)),
    "qwen": (_Roles(_CHATML, _same(_CHATML, "<|im_end|>\n"), "<|im_start|>assistant\n",
                    default_system="You are a helpful assistant."), ("<|im_end|>",)),
    "yi-1.5": (_Roles({"system": "", "user": "<|im_start|>user\n", "assistant": ""},
                      {"system": "", "user": "<|im_end|>\n<|im_start|>assistant\n",
                       "assistant": "<|im_end|>\n"}, ""), ("<|im_end|>",)),
    "llama-2-chat": (_Roles({"user": "[INST] ", "assistant": " "},
                            {"user": " [/INST]", "assistant": " </s><s>"}, "", bos=True,
                            system_in_user=("<<SYS>>\n", "\n<</SYS>>\n\n")), ()),
    "llama-3-instruct": (_Roles(_LLAMA3, _same(_LLAMA3, "<|eot_id|>"),
                                "<|start_header_id|>assistant<|end_header_id|>\n\n", bos=True),
                         ("<|eot_id|>",)),
    "llama-4": (_Roles(_LLAMA4, _same(_LLAMA4, "<|eot|>"),
                       "<|header_start|>assistant<|header_end|>\n\n", bos=True), ("<|eot|>",)),
    "mistral": (_Roles({"user": "[INST] ", "assistant": ""}, {"user": " [/INST]", "assistant": "</s>"},
                       "", bos=True, system_in_user=("", "\n\n")), ()),
    "gemma-it": (_Roles({"user": "<start_of_turn>user\n", "assistant": "<start_of_turn>model\n"},
                        {"user": "<end_of_turn>\n", "assistant": "<end_of_turn>\n"},
                        "<start_of_turn>model\n", bos=True, system_in_user=("", "\n\n")),
                 ("<end_of_turn>",)),
    "deepseek-v3": (_Roles({"system": "", "user": "<｜User｜>", "assistant": "<｜Assistant｜>"},
                           {"system": "", "user": "", "assistant": _DEEPSEEK_EOS},
                           "<｜Assistant｜>", bos=True), (_DEEPSEEK_EOS,)),
    "vicuna_v1.1": (_Roles({"system": "", "user": "USER: ", "assistant": "ASSISTANT: "},
                           {"system": " ", "user": " ", "assistant": "</s>"}, "ASSISTANT:",
                           default_system=_VICUNA_SYSTEM), ()),
    "granite-3-instruct": (_Roles(_GRANITE, _same(_GRANITE, "<|end_of_text|>\n"),
                                  "<|start_of_role|>assistant<|end_of_role|>"),
                           ("<|end_of_text|>",)),
    "c4ai-command-r": (_Roles({"system": "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>",
                               "user": "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>",
                               "assistant": "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"},
                              {"system": "<|END_OF_TURN_TOKEN|>", "user": "<|END_OF_TURN_TOKEN|>",
                               "assistant": "<|END_OF_TURN_TOKEN|>"},
                              "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", bos=True),
                       ("<|END_OF_TURN_TOKEN|>",)),
    "claude": (_Roles({"system": "", "user": "\n\nHuman: ", "assistant": "\n\nAssistant: "},
                      {"system": "", "user": "", "assistant": ""}, "\n\nAssistant:"), ()),
    "default": (_Roles({"system": "SYSTEM: ", "user": "USER: ", "assistant": "ASSISTANT: "},
                       {"system": "\n", "user": "\n", "assistant": "\n"}, "ASSISTANT:"), ()),
    "plain": (_Roles({"system": "system: ", "user": "user: ", "assistant": "assistant: "},
                     {"system": "\n", "user": "\n", "assistant": "\n"}, "assistant: "), ()),
}
# Other names SGLang (or earlier rollserve) uses for the same formats.
_ALIASES = {"llama-2": "llama-2-chat", "llama-3": "llama-3-instruct", "llama3": "llama-3-instruct",
            "qwen2": "qwen", "qwen2.5": "qwen", "deepseek": "deepseek-v3", "gemma": "gemma-it"}

BUILTIN_CHAT_TEMPLATES: Tuple[str, ...] = tuple(_BUILTIN) + tuple(_ALIASES)


def builtin_chat_template(name: str) -> ChatTemplate:
    key = _ALIASES.get(name, name)
    spec, stop = _BUILTIN[key]
    return ChatTemplate(name=key, jinja=_jinja(spec), stop=stop)


# SGLang's JSON conversation format (docs/references/custom_chat_template.md): the separator
# styles a file may use, as (role prefix, generation prompt) given the role string.
_SEP_STYLES = {
    "CHATML": (lambda role: role + "\n", lambda role: role + "\n", lambda sep: sep + "\n"),
    "ADD_COLON_SINGLE": (lambda role: role + ": ", lambda role: role + ":", lambda sep: sep),
    "NO_COLON_SINGLE": (lambda role: role, lambda role: role, lambda sep: sep),
}


def json_chat_template(path: str) -> ChatTemplate:
    with open(path) as f:
        spec = json.load(f)
    style = spec.get("sep_style", "CHATML")
    if style not in _SEP_STYLES:
        raise ValueError(f"chat_template: {path}: sep_style {style!r} is not supported "
                         f"({', '.join(_SEP_STYLES)}); write the template as a .jinja file")
    missing = [k for k in ("user", "assistant") if k not in spec]
    if missing:
        raise ValueError(f"chat_template: {path}: missing {', '.join(missing)}")
    role_prefix, gen_prompt, role_suffix = _SEP_STYLES[style]
    sep = spec.get("sep", "")
    roles = {"user": spec["user"], "assistant": spec["assistant"], "system": spec.get("system", "")}
    prefix = {r: role_prefix(s) for r, s in roles.items()}
    suffix = {r: role_suffix(sep) for r in roles}
    if not roles["system"]:  # no system role string: the system text stands alone
        prefix["system"] = ""
    stop = spec.get("stop_str") or ()
    template = _Roles(prefix, suffix, gen_prompt(roles["assistant"]),
                      default_system=spec.get("system_message") or None)
    return ChatTemplate(name=spec.get("name", os.path.basename(path)), jinja=_jinja(template),
                        stop=tuple([stop] if isinstance(stop, str) else stop))


def resolve_chat_template(name_or_path: str) -> ChatTemplate:
    """A built-in name, a .json file in SGLang's format, or any other file as Jinja.
    Raises ValueError naming chat_template and the choices otherwise."""
    if name_or_path in _BUILTIN or name_or_path in _ALIASES:
        return builtin_chat_template(name_or_path)
    if os.path.isfile(name_or_path):
        if name_or_path.endswith(".json"):
            return json_chat_template(name_or_path)
        with open(name_or_path) as f:
            return ChatTemplate(name=os.path.basename(name_or_path), jinja=f.read())
    raise ValueError(f"chat_template: {name_or_path!r} is neither a built-in template "
                     f"({', '.join(BUILTIN_CHAT_TEMPLATES)}) nor a file (.jinja, or .json in "
                     "SGLang's conversation format)")


def with_template_stop(stop: Union[None, str, List[str]],
                       template_stop: Sequence[str]) -> Union[None, str, List[str]]:
    """A request's `stop` plus the template's stop strings (unchanged when it has none)."""
    if not template_stop:
        return stop
    listed = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    return listed + [s for s in template_stop if s not in listed]
