"""--chat-template: SGLang's built-in names, Jinja and SGLang-JSON files, and
--hf-chat-template-name, rendered through the real tokenizer of the default model."""

import json

import pytest
from transformers import AutoTokenizer

from rollserve.core.chat_templates import (BUILTIN_CHAT_TEMPLATES, resolve_chat_template,
                                           with_template_stop)
from rollserve.core.tokenizer import load_tokenizer, named_chat_template

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"}]


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    return AutoTokenizer.from_pretrained(default_model_dir)


def render(tokenizer, name_or_path, conversation=CONVERSATION):
    return tokenizer.apply_chat_template(conversation, chat_template=resolve_chat_template(
        name_or_path).jinja, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", BUILTIN_CHAT_TEMPLATES)
def test_every_builtin_renders_every_turn(tokenizer, name):
    text = render(tokenizer, name)
    for message in CONVERSATION:
        assert message["content"] in text
    assert text.index("Be brief.") < text.index("Hi") < text.index("Hello!") < text.index("2+2?")


def test_common_formats(tokenizer):
    assert render(tokenizer, "chatml") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n")
    # qwen: chatml with a default system prompt when the conversation has none
    assert render(tokenizer, "qwen", CONVERSATION[1:2]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n")
    bos = tokenizer.bos_token
    assert render(tokenizer, "llama-3-instruct", CONVERSATION[1:2]) == (
        f"{bos}<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    # models without a system turn get it in front of the first user message
    assert render(tokenizer, "llama-2") == (
        f"{bos}[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] 2+2? [/INST]")
    assert render(tokenizer, "gemma-it").startswith(f"{bos}<start_of_turn>user\nBe brief.\n\nHi")
    assert render(tokenizer, "deepseek-v3") == (
        f"{bos}Be brief.<｜User｜>Hi<｜Assistant｜>Hello!<｜end▁of▁sentence｜><｜User｜>2+2?<｜Assistant｜>")
    assert resolve_chat_template("chatml").stop == ("<|im_end|>",)
    assert resolve_chat_template("llama-3").name == "llama-3-instruct"


def test_jinja_and_sglang_json_files(tokenizer, tmp_path):
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert render(tokenizer, str(jinja)).startswith("[system] Be brief.\n[user] Hi\n")
    spec = {"name": "my_model", "system": "<|im_start|>system", "user": "<|im_start|>user",
            "assistant": "<|im_start|>assistant", "sep_style": "CHATML", "sep": "<|im_end|>",
            "stop_str": ["<|im_end|>", "<|im_start|>"]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec))
    assert render(tokenizer, str(path)) == render(tokenizer, "chatml")
    assert resolve_chat_template(str(path)).stop == ("<|im_end|>", "<|im_start|>")
    path.write_text(json.dumps({**spec, "sep_style": "ADD_COLON_SINGLE", "sep": "\n",
                                "user": "USER", "assistant": "ASSISTANT", "system": ""}))
    assert render(tokenizer, str(path), CONVERSATION[1:2]) == "USER: Hi\nASSISTANT:"
    path.write_text(json.dumps({**spec, "sep_style": "DEEPSEEK_CHAT"}))
    with pytest.raises(ValueError, match="sep_style 'DEEPSEEK_CHAT' is not supported"):
        resolve_chat_template(str(path))


def test_unknown_name_lists_the_choices():
    with pytest.raises(ValueError, match=r"^chat_template: 'llama-9' .*chatml, qwen"):
        resolve_chat_template("llama-9")


def test_template_stop_strings_join_the_request_stop():
    assert with_template_stop(None, ("<|im_end|>",)) == ["<|im_end|>"]
    assert with_template_stop("\n\n", ("<|im_end|>",)) == ["\n\n", "<|im_end|>"]
    assert with_template_stop(["<|im_end|>"], ("<|im_end|>",)) == ["<|im_end|>"]
    assert with_template_stop("x", ()) == "x"


def test_load_tokenizer_with_a_builtin_and_a_named_template(default_model_dir):
    tok = load_tokenizer(default_model_dir, chat_template="llama-3-instruct")
    assert "<|start_header_id|>" in tok.apply_chat_template(CONVERSATION, tokenize=False)
    own = load_tokenizer(default_model_dir).chat_template
    assert load_tokenizer(default_model_dir, hf_chat_template_name="default").chat_template == own
    with pytest.raises(ValueError, match="no chat template named 'tool_use' .*it has: default"):
        load_tokenizer(default_model_dir, hf_chat_template_name="tool_use")

    class Named:  # a tokenizer shipping several named templates (transformers keeps a dict)
        chat_template = {"default": "A", "tool_use": "B"}

    assert named_chat_template(Named(), "tool_use") == "B"
