"""The front end's grammar check (frontend/grammar_check.py): a malformed json_schema, regex
or ebnf is an InvalidRequest naming the field with xgrammar's reason, before the scheduler."""

import pytest

from rollserve.core.sampling_params import InvalidRequest, SamplingParams
from rollserve.frontend.grammar_check import check_grammar


@pytest.mark.parametrize("field,value,says", [
    ("json_schema", "{not json", "not valid JSON"),
    ("json_schema", "[1, 2]", "a JSON schema is an object"),
    ("json_schema", '{"type": "sphere"}', 'Unsupported type "sphere"'),
    ("regex", "a(b", "parenthesis is not closed"),
    ("ebnf", "root ::= missing", 'Rule "missing" is not defined'),
])
def test_malformed_constraints_name_their_field(field, value, says):
    with pytest.raises(InvalidRequest) as info:
        check_grammar(SamplingParams.from_dict({field: value}), "xgrammar")
    assert info.value.field == f"sampling_params.{field}" and says in info.value.message
    assert "/project/" not in info.value.message  # xgrammar's source location is cut off


def test_good_constraints_pass_and_none_backend_refuses():
    for params in ({"json_schema": '{"type": "object"}'}, {"regex": "(yes|no)"},
                   {"ebnf": 'root ::= "a" | "b"'}, {}):
        check_grammar(SamplingParams.from_dict(params), "xgrammar")
    with pytest.raises(InvalidRequest, match="grammar-backend none"):
        check_grammar(SamplingParams.from_dict({"regex": "a"}), "none")
    check_grammar(SamplingParams.from_dict({}), "none")
