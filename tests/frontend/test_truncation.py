"""--allow-auto-truncate's rule: the prompt's start is kept and room is left for the output."""

from rollserve.frontend.truncation import DEFAULT_ROOM, truncate_prompt

PROMPT = list(range(1000))


def test_prompts_that_fit_are_untouched():
    assert truncate_prompt(PROMPT[:63], 8, 63) == PROMPT[:63]


def test_room_is_left_for_the_requested_tokens():
    # budget 64 (context 64): 8 new tokens need the prompt cut to 56, keeping its start
    assert truncate_prompt(PROMPT, 8, 63) == PROMPT[:56]
    assert truncate_prompt(PROMPT, 0, 63) == PROMPT[:63]  # prompt logprobs only
    assert len(truncate_prompt(PROMPT, None, 511)) == 512 - DEFAULT_ROOM


def test_the_prompt_keeps_at_least_half_of_the_budget():
    assert truncate_prompt(PROMPT, 100, 63) == PROMPT[:32]
    assert truncate_prompt(PROMPT, "bad", 63) == PROMPT[:32]  # not validated yet: the default room
