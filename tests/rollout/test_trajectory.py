"""Trajectory bookkeeping and next_turn_text on SmolLM2's chat template (the server side
of token-exact multi-turn is tests/api/test_multiturn.py)."""

import pytest

from rollserve.rollout.sample import Sample
from rollserve.rollout.trajectory import Trajectory, next_turn_text


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def test_next_turn_text_is_what_the_template_adds(tokenizer):
    messages = [{"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "Apple."}]
    follow = [{"role": "user", "content": "Another?"}]
    whole = tokenizer.apply_chat_template(messages + follow, tokenize=False,
                                          add_generation_prompt=True)
    head = tokenizer.apply_chat_template(messages, tokenize=False)
    # the model's turn ended on EOS (<|im_end|>, in its output ids): the rest of the turn's
    # end, then the new turn and the generation prompt
    upto_eos = head[:head.rindex("<|im_end|>") + len("<|im_end|>")]
    suffix = next_turn_text(tokenizer, follow)
    assert upto_eos + suffix == whole
    cut_off = upto_eos[:-len("<|im_end|>")]  # max_new_tokens ended the turn before its EOS
    assert cut_off + next_turn_text(tokenizer, follow, eos_sampled=False) == whole


def sample(prompt_tokens, ids, version="v1"):
    return Sample(prompt_index=0, sample_index=0, text="", output_ids=ids,
                  output_logprobs=[-0.5] * len(ids), input_token_logprobs=None,
                  finish_reason={"type": "stop"}, weight_version=version,
                  prompt_tokens=prompt_tokens, completion_tokens=len(ids), cached_tokens=0,
                  meta_info={})


def test_loss_mask_covers_the_model_turns_only():
    traj = Trajectory([1, 2, 3])
    traj.add_model_turn(sample(3, [10, 11]))
    traj.add_context([20, 21, 22])
    traj.add_model_turn(sample(8, [12], "v2"))
    assert traj.ids == [1, 2, 3, 10, 11, 20, 21, 22, 12]
    assert traj.completion_mask == [1, 1, 0, 0, 0, 1]
    assert traj.logprobs[3:] == [-0.5, -0.5, None, None, None, -0.5]
    assert [(t.by_model, t.weight_version) for t in traj.turns] == [
        (True, "v1"), (False, None), (True, "v2")]
    with pytest.raises(ValueError, match="generate on trajectory.ids"):
        traj.add_model_turn(sample(3, [13]))  # sampled on an older prefix
