"""GenerateReqInput -> PromptItems (frontend/request_input.py): token_ids_logprob's shapes
(SGLang's: one list for every prompt, or one list or null per prompt) and its errors."""

import pytest

from rollserve.core.sampling_params import InvalidRequest
from rollserve.frontend.request_input import GenerateReqInput, normalize


def items_of(**kwargs):
    return normalize(GenerateReqInput(**kwargs))[0]


def test_token_ids_logprob_shapes():
    one = items_of(input_ids=[[1, 2], [3]], return_logprob=True, token_ids_logprob=[7, 8])
    assert [item.token_ids_logprob for item in one] == [[7, 8], [7, 8]]
    per = items_of(input_ids=[[1, 2], [3]], return_logprob=True, token_ids_logprob=[[7], None])
    assert [item.token_ids_logprob for item in per] == [[7], None]
    for empty in (None, []):
        assert items_of(text="a", token_ids_logprob=empty)[0].token_ids_logprob is None


@pytest.mark.parametrize("kwargs, says", [
    ({"text": "a", "token_ids_logprob": [5]}, "return_logprob"),
    ({"text": "a", "return_logprob": True, "token_ids_logprob": [[5], [6]]}, "2 lists for 1"),
    ({"text": "a", "return_logprob": True, "token_ids_logprob": ["x"]}, "list of token ids"),
    ({"text": "a", "return_logprob": True, "top_logprobs_num": 21}, "[0, 20]"),
])
def test_bad_token_ids_logprob_and_top_cap(kwargs, says):
    with pytest.raises(InvalidRequest) as e:
        items_of(**kwargs)
    assert says in str(e.value)


def test_an_internal_route_may_raise_the_top_cap():
    got = items_of(text="a", return_logprob=True, top_logprobs_num=100, max_top_logprobs=100)
    assert got[0].top_logprobs_num == 100
