"""Structured output on the real server with the default model: every sampled answer
(n=16, temperature 1) parses against its JSON schema / matches its regex; OpenAI's
response_format through the official client; malformed constraints are a 400 naming the
field; a grammar no token can continue ends the request with a clear reason."""

from __future__ import annotations

import json
import math
import re

from tests.api.test_errors import assert_error

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 10},
                         "age": {"type": "integer", "minimum": 0, "maximum": 120}}}
PROMPT = "<|im_start|>user\nGive a person as JSON with name and age.<|im_end|>\n<|im_start|>assistant\n"


def assert_person(text: str) -> None:
    """PERSON, checked by hand (no schema library needed)."""
    person = json.loads(text)
    assert set(person) == {"name", "age"}, text
    assert isinstance(person["name"], str) and len(person["name"]) <= 10, text
    assert type(person["age"]) is int and 0 <= person["age"] <= 120, text


def test_generate_json_schema_n16(http):
    r = http.post("/generate", json={"text": PROMPT, "sampling_params": {
        "json_schema": json.dumps(PERSON), "n": 16, "temperature": 1.0,
        # room for the whitespace JSON allows between tokens, which sampling may draw
        "max_new_tokens": 160}})
    assert r.status_code == 200, r.text
    results = r.json()
    assert len(results) == 16
    for result in results:
        assert result["meta_info"]["finish_reason"]["type"] == "stop", result
        assert_person(result["text"])


def test_generate_regex_n16_with_logprobs_and_stop(http):
    pattern = r"(yes|no), [0-9]{1,2} (cats|dogs)"
    r = http.post("/generate", json={
        "text": "Answer: ", "return_logprob": True, "top_logprobs_num": 2,
        "sampling_params": {"regex": pattern, "n": 16, "temperature": 1.0, "max_new_tokens": 16}})
    assert r.status_code == 200, r.text
    for result in r.json():
        assert re.fullmatch(pattern, result["text"]), result["text"]
        logprobs = result["meta_info"]["output_token_logprobs"]
        assert len(logprobs) == result["meta_info"]["completion_tokens"]
        # the constrained distribution: the sampled token is never a masked (-inf) one
        assert all(lp is not None and math.isfinite(lp) for lp, _, _ in logprobs)
    # a stop string cuts the constrained answer as it would any other
    r = http.post("/generate", json={"text": "Answer: ", "sampling_params": {
        "regex": pattern, "stop": ",", "temperature": 0, "max_new_tokens": 16}})
    out = r.json()
    assert out["text"] in ("yes", "no") and out["meta_info"]["finish_reason"]["matched"] == ","


def test_a_grammar_no_token_can_continue_ends_with_a_reason(http):
    r = http.post("/generate", json={"text": "x", "sampling_params": {
        "ebnf": "root ::= [^\\x00-\\U0010FFFF]", "max_new_tokens": 8}})
    assert r.status_code == 200, r.text
    reason = r.json()["meta_info"]["finish_reason"]
    assert reason["type"] == "abort" and "no token can continue" in reason["message"]


def test_malformed_constraints_are_refused(http, model_name):
    for field, value, says in (("json_schema", "{not json", "not valid json"),
                               ("json_schema", '{"type": "sphere"}', "sphere"),
                               ("regex", "a(b", "parenthesis"),
                               ("ebnf", "root ::= undefined_rule", "undefined_rule")):
        r = http.post("/generate", json={"text": "x", "sampling_params": {field: value}})
        assert_error(r, 400, f"sampling_params.{field}", says)
    r = http.post("/generate", json={"text": "x", "sampling_params": {"regex": "a", "ebnf": "root ::= \"a\""}})
    assert_error(r, 400, "sampling_params.ebnf", "only one")
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "sphere"}}}
    r = http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 4,
                                               "messages": [{"role": "user", "content": "Hi"}],
                                               "response_format": bad_schema})
    assert_error(r, 400, "response_format", "sphere")
    r = http.post("/v1/completions", json={"model": model_name, "prompt": "x", "regex": "(",
                                          "max_tokens": 4})
    assert_error(r, 400, "regex")


def test_openai_client_json_schema_and_json_object(client, model_name):
    messages = [{"role": "user", "content": "Give a person as JSON with name and age."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    chat = client.chat.completions.create(model=model_name, messages=messages, temperature=1.0,
                                          max_tokens=160, response_format=fmt)
    assert chat.choices[0].finish_reason == "stop"
    assert_person(chat.choices[0].message.content)
    obj = client.chat.completions.create(model=model_name, messages=messages, temperature=0,
                                         max_tokens=48, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    completion = client.completions.create(model=model_name, prompt=PROMPT, max_tokens=48,
                                           temperature=0, extra_body={"response_format": fmt})
    assert_person(completion.choices[0].text)


def test_openai_fields_map_onto_the_sampling_params():
    """api/structured_output.py alone (no server)."""
    import pytest

    from rollserve.api.protocol import ApiError, ChatCompletionRequest, CompletionRequest
    from rollserve.api.structured_output import structured_output_params

    def params(**fields):
        return structured_output_params(ChatCompletionRequest(model="m", messages=[], **fields),
                                        "xgrammar")

    assert params() == {} and params(response_format={"type": "text"}) == {}
    assert params(response_format={"type": "json_object"}) == {"json_schema": '{"type": "object"}'}
    fmt = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON, "strict": True}}
    assert json.loads(params(response_format=fmt)["json_schema"]) == PERSON
    assert params(structured_outputs={"choice": ["a.b", "c"]}) == {"regex": r"(a\.b)|(c)"}
    assert params(structured_outputs={"grammar": 'root ::= "a"'}) == {"ebnf": 'root ::= "a"'}
    completion = CompletionRequest(model="m", prompt="x", regex="[0-9]")
    assert structured_output_params(completion, "xgrammar") == {"regex": "[0-9]"}
    for fields, param in (({"response_format": {"type": "xml"}}, "response_format.type"),
                          ({"regex": "a", "ebnf": 'root ::= "a"'}, "ebnf"),
                          ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
                          ({"structured_outputs": {"regex": "a", "json": {}}}, "structured_outputs")):
        with pytest.raises(ApiError) as info:
            params(**fields)
        assert info.value.status == 400 and info.value.param == param, info.value.message
    with pytest.raises(ApiError, match="grammar-backend none"):
        structured_output_params(completion, "none")
