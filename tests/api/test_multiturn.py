"""Token-exact multi-turn on the shared server: a conversation continued by appending
token ids (rollout/trajectory.py, docs/multiturn.md) gives what one fresh request on the
same ids gives, with the earlier turns served from the prefix cache."""

import pytest

from rollserve.rollout import RolloutClient
from rollserve.rollout.trajectory import Trajectory, next_turn_text

pytestmark = pytest.mark.slow
PARAMS = {"temperature": 0, "max_new_tokens": 6}


def test_continuation_by_token_ids_equals_a_fresh_request(server, http, tokenizer):
    client = RolloutClient(server.url, progress=False)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a fruit."}],
                                           tokenize=False, add_generation_prompt=True)
    traj = Trajectory(tokenizer.encode(prompt, add_special_tokens=False))
    first = client.generate(input_ids=[traj.ids], sampling_params=PARAMS)[0][0]
    traj.add_model_turn(first)
    ended = first.finish_reason.get("type") == "stop"
    follow = next_turn_text(tokenizer, [{"role": "user", "content": "Another one?"}],
                            eos_sampled=ended)
    traj.add_context(tokenizer.encode(follow, add_special_tokens=False))

    second = client.generate(input_ids=[traj.ids], sampling_params=PARAMS)[0][0]
    # the first turn's prompt and answer came from the cache (all but the last token,
    # whose KV the first request never computed)
    assert second.cached_tokens >= len(traj.prompt_ids) + len(first.output_ids) - 1
    assert http.post("/flush_cache").status_code == 200
    fresh = client.generate(input_ids=[traj.ids], sampling_params=PARAMS)[0][0]
    assert fresh.cached_tokens == 0
    assert fresh.output_ids == second.output_ids
    assert fresh.output_logprobs == pytest.approx(second.output_logprobs, abs=1e-3)

    traj.add_model_turn(second)
    n_prompt, n1, n2 = len(traj.prompt_ids), len(first.output_ids), len(second.output_ids)
    assert traj.ids[n_prompt:n_prompt + n1] == first.output_ids
    assert traj.ids[-n2:] == second.output_ids
    assert sum(traj.loss_mask) == n1 + n2 and traj.loss_mask[-n2:] == [1] * n2
    assert all((lp is None) == (m == 0) for lp, m in zip(traj.logprobs, traj.loss_mask))
    assert [t.weight_version for t in traj.turns if t.by_model] == ["default", "default"]
    with pytest.raises(ValueError, match="generate on trajectory.ids"):
        traj.add_model_turn(first)
    client.close()
