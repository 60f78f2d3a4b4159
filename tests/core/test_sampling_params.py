"""Every invalid sampling parameter is refused with an error naming it."""

import pytest

from rollserve.core.sampling_params import MAX_N, InvalidRequest, SamplingParams

BAD = [
    ("max_new_tokens", -1), ("max_new_tokens", 1.5), ("min_new_tokens", -1),
    ("temperature", -0.1), ("temperature", float("nan")), ("temperature", "hot"),
    ("top_p", 0), ("top_p", 1.1), ("top_k", 0), ("top_k", -2), ("min_p", 1.5),
    ("presence_penalty", 3), ("frequency_penalty", -3), ("repetition_penalty", 0),
    ("repetition_penalty", float("inf")), ("n", 0), ("n", MAX_N + 1), ("n", True),
    ("seed", "7"), ("stop", 5), ("stop", [""]), ("stop_token_ids", [-1]),
    ("stop_token_ids", "2"), ("ignore_eos", "yes"), ("skip_special_tokens", 1),
    ("logit_bias", [1, 2]), ("logit_bias", {"x": 1.0}), ("logit_bias", {"5": 101.0}),
    ("logit_bias", {"5": float("nan")}), ("logit_bias", {"-1": 1.0}), ("logit_bias", {"5": "1"}),
]


@pytest.mark.parametrize("name,value", BAD)
def test_invalid_value_names_the_field(name, value):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams.from_dict({name: value})
    assert info.value.field == f"sampling_params.{name}"


def test_min_new_tokens_above_max_is_refused():
    with pytest.raises(InvalidRequest, match="min_new_tokens"):
        SamplingParams.from_dict({"max_new_tokens": 2, "min_new_tokens": 3})


def test_unknown_parameter_is_refused():
    with pytest.raises(InvalidRequest) as info:
        SamplingParams.from_dict({"temprature": 0.5})
    assert info.value.field == "sampling_params.temprature"


def test_logit_bias_token_beyond_vocab_is_refused():
    params = SamplingParams(logit_bias={"50": 1.0})
    with pytest.raises(InvalidRequest, match="out of range"):
        params.normalize_and_validate(vocab_size=50)


def test_valid_parameters_are_normalized():
    params = SamplingParams.from_dict({"stop": "END", "logit_bias": {"3": 2}, "sampling_seed": 4,
                                       "temperature": 0, "n": MAX_N})
    assert params.stop == ["END"] and params.logit_bias == {3: 2.0} and params.seed == 4
    assert params.is_greedy and params.n == MAX_N


def test_stop_token_ids_beyond_vocab_are_refused():
    """They index the logits (min_new_tokens masks them): one past the vocabulary would
    crash the scheduler's step, not just this request (issue #14)."""
    params = SamplingParams(stop_token_ids=[3, 10 ** 12])
    with pytest.raises(InvalidRequest) as info:
        params.normalize_and_validate(vocab_size=100)
    assert info.value.field == "sampling_params.stop_token_ids" and "100" in info.value.message
    SamplingParams(stop_token_ids=[99]).normalize_and_validate(vocab_size=100)


def test_grammar_fields_are_one_string_at_most():
    params = SamplingParams.from_dict({"json_schema": {"type": "object"}})
    assert params.grammar == ("json_schema", '{"type": "object"}')  # an object becomes its JSON
    assert SamplingParams.from_dict({"regex": "[0-9]+"}).grammar == ("regex", "[0-9]+")
    assert SamplingParams.from_dict({}).grammar is None
    with pytest.raises(InvalidRequest) as info:
        SamplingParams.from_dict({"regex": "a", "ebnf": 'root ::= "a"'})
    assert info.value.field == "sampling_params.ebnf" and "only one" in info.value.message
    with pytest.raises(InvalidRequest) as info:
        SamplingParams.from_dict({"regex": 5})
    assert info.value.field == "sampling_params.regex"
