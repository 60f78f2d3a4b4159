"""Tool calls and reasoning on /v1/chat/completions, end to end: a server on the default
model with --tool-call-parser qwen25, --reasoning-parser qwen3 and a chat template that
renders tools as Qwen2.5's does (examples/agentic/tool_chat_template.jinja). The conversation shows the
model three answers that think, then call `add`; greedy, it answers the fourth alike,
which the parsers split into reasoning_content and tool_calls."""

import json
import os

import httpx
import openai
import pytest

from tests.api.conftest import start_server, stop_server

pytestmark = pytest.mark.slow

TEMPLATE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "agentic",
                        "tool_chat_template.jinja")
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                    "b": {"type": "integer"}},
                   "required": ["a", "b"]}}}


def conversation(question="What is 6+2?"):
    messages = [{"role": "system", "content": "Always answer by calling the add tool."}]
    for i, (a, b) in enumerate([(2, 3), (4, 1), (7, 5)]):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "add", "arguments": json.dumps({"a": a, "b": b})}}
        messages += [{"role": "user", "content": f"What is {a}+{b}?"},
                     {"role": "assistant", "content": "<think>\nI add them.\n</think>\n\n",
                      "tool_calls": [call]}]
    return messages + [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    running = start_server(tmp_path_factory.mktemp("tool-server-logs"), "tools", [
        "--tool-call-parser", "qwen25", "--reasoning-parser", "qwen3", "--chat-template", TEMPLATE])
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def tool_client(tool_server):
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=300)


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):  # the server's (not the shared server fixture's, not needed here)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def tool_http(tool_server):
    with httpx.Client(base_url=tool_server.url, timeout=300) as client:
        yield client


def ask(client, stream=False, **kwargs):
    kwargs = {"model": "default", "messages": conversation(), "tools": [ADD], "temperature": 0,
              "max_tokens": 48, **kwargs}
    return client.chat.completions.create(stream=stream, **kwargs)


def test_tool_call_whole_and_streamed(tool_client):
    out = ask(tool_client)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert getattr(choice.message, "reasoning_content") == "I add them."
    assert not choice.message.content
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "add" and json.loads(call.function.arguments) == {"a": 6, "b": 2}

    reasoning, content, calls, reasons = "", "", {}, []
    for chunk in ask(tool_client, stream=True):
        for c in chunk.choices:
            reasons.append(c.finish_reason)
            reasoning += getattr(c.delta, "reasoning_content", None) or ""  # SGLang's field
            content += c.delta.content or ""
            for d in c.delta.tool_calls or []:
                if d.id is not None:  # the first delta of a call: its id and name
                    assert d.index not in calls and d.function.name
                    calls[d.index] = [d.id, d.function.name, d.function.arguments or ""]
                else:
                    assert d.function.name is None
                    calls[d.index][2] += d.function.arguments
    assert [r for r in reasons if r] == ["tool_calls"]
    assert reasoning == "I add them." and content == (choice.message.content or "")
    assert [(name, args) for _, name, args in calls.values()] == [
        (call.function.name, call.function.arguments)]
    assert len(calls[0][2]) > 0


def test_separate_reasoning_false_keeps_it_in_content(tool_http):
    body = {"model": "default", "messages": conversation(), "temperature": 0, "max_tokens": 6}
    split = tool_http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    whole = tool_http.post("/v1/chat/completions",
                           json={**body, "separate_reasoning": False}).json()["choices"][0]["message"]
    assert whole["content"].startswith("<think>") and whole["reasoning_content"] is None
    assert split["reasoning_content"] and split["reasoning_content"] in whole["content"]
    assert split["content"] == ""


def test_tools_and_template_kwargs_reach_the_template(tool_http, tokenizer):
    messages = [{"role": "user", "content": "What is 1+1?"}]
    tokens = tool_http.post("/tokenize", json={"messages": messages, "tools": [ADD]}).json()
    prompt = tokenizer.decode(tokens["tokens"])
    assert "<tools>" in prompt and '"name": "add"' in prompt
    # the chat endpoint renders the same prompt; tool_choice none leaves the tools out
    out = tool_http.post("/v1/chat/completions", json={
        "model": "default", "messages": messages, "tools": [ADD], "max_tokens": 1,
        "return_token_ids": True}).json()
    assert out["prompt_token_ids"] == tokens["tokens"]
    for extra, expect_tools, thinking_closed in (({"tool_choice": "none"}, False, False),
                                                 ({"chat_template_kwargs": {"enable_thinking": False}},
                                                  True, True)):
        out = tool_http.post("/v1/chat/completions", json={
            "model": "default", "messages": messages, "tools": [ADD], "max_tokens": 1,
            "return_token_ids": True, **extra}).json()
        prompt = tokenizer.decode(out["prompt_token_ids"])
        assert ("<tools>" in prompt) == expect_tools
        assert prompt.endswith("<think>\n\n</think>\n\n") == thinking_closed


@pytest.mark.parametrize("field,value,param", [
    ("tools", [{"type": "function", "function": {"name": "bad name!"}}], "tools[0].function.name"),
    ("tools", [{"type": "retrieval"}], "tools[0]"),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": "x"}}],
     "tools[0].function.parameters"),
    ("tool_choice", {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    ("tool_choice", "sometimes", "tool_choice"),
    ("chat_template_kwargs", {"tools": []}, "chat_template_kwargs"),
])
def test_bad_tools_are_refused_naming_the_field(tool_http, field, value, param):
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "tools": [ADD],
            "max_tokens": 1, field: value}
    answer = tool_http.post("/v1/chat/completions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    if field == "tool_choice" and isinstance(value, dict):
        assert "nope" in answer.json()["error"]["message"]


def _grammar_available() -> bool:
    try:
        import rollserve.scheduler.grammar  # noqa: F401  (the grammar backend's module)
    except ImportError:
        return False
    return True


def test_required_tool_choice_without_a_grammar_is_refused(tool_http):
    if _grammar_available():
        pytest.skip("this build has the grammar backend")
    answer = tool_http.post("/v1/chat/completions", json={
        "model": "default", "messages": conversation(), "tools": [ADD], "max_tokens": 1,
        "tool_choice": "required"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "tool_choice"


@pytest.mark.skipif(not _grammar_available(), reason="needs rollserve.scheduler.grammar")
@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "add"}}])
def test_required_and_named_tool_choice_are_enforced(tool_client, tool_choice):
    # a question the model would not answer with a call: the grammar makes it one anyway
    out = ask(tool_client, messages=[{"role": "user", "content": "Write a haiku about rain."}],
              tool_choice=tool_choice, max_tokens=64)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.tool_calls[0].function.name == "add"
    assert isinstance(json.loads(choice.message.tool_calls[0].function.arguments), dict)
