"""The GRPO-shaped rollout bench end to end on CPU with a tiny model (the smoke test of
`python -m rollserve.bench.rollout`), and its workload and figures."""

import json
import random
from types import SimpleNamespace

from rollserve.bench import rollout


def test_workload_fixed_and_drawn_lengths():
    args = SimpleNamespace(seed=0, num_prompts=6, input_len=10, min_input_len=0, max_input_len=0,
                           output_len=7, min_output_len=3, max_output_len=9, temperature=1.0,
                           ignore_eos=False, stop_every=50)
    prompts, params = rollout.workload(args, vocab=1000)
    assert [len(p) for p in prompts] == [10] * 6
    assert all(3 <= p["max_new_tokens"] <= 9 for p in params)
    assert len(set(p["max_new_tokens"] for p in params)) > 1
    assert all(len(p["stop_token_ids"]) == 1000 // 50 and not p["ignore_eos"] for p in params)


def test_figures_tail_and_counters():
    def sample(prompt, cached, completion):
        return {"meta_info": {"prompt_tokens": prompt, "cached_tokens": cached,
                              "completion_tokens": completion}}

    groups = [(float(t), [sample(10, 9, 5), sample(10, 9, 5)]) for t in range(1, 11)]
    before = {"num_retracted_reqs_total": 2, "retracted_recomputed_tokens_total": 10}
    after = {"num_retracted_reqs_total": 5, "retracted_recomputed_tokens_total": 40,
             "peak_running_reqs": 8, "peak_gen_throughput": 20.0}
    row = rollout.figures("m", random.Random(0).sample(groups, 10), before, after)
    assert row["time_to_last_sample_s"] == 10.0 and row["time_to_90pct_groups_s"] == 9.0
    assert row["tail_s"] == 1.0 and row["output_tok_s"] == 10.0
    assert row["num_retracted_reqs_total"] == 3 and row["retracted_recomputed_tokens_total"] == 30
    assert row["recomputed_fraction"] == round(30 / 300, 4)
    assert row["prefix_cache_hit_rate"] == 0.9 and row["fraction_of_peak_decode"] == 0.5
    # a tree without the counters (an older commit): None, not an error
    assert rollout.figures("m", groups, {}, {})["num_retracted_reqs_total"] is None


def test_cpu_smoke_run(tiny_models, tmp_path):
    out = tmp_path / "rollout.json"
    report = rollout.main(["--model-path", tiny_models["llama"], "--device", "cpu",
                           "--num-prompts", "2", "--n", "3", "--input-len", "24",
                           "--output-len", "8", "--ignore-eos", "--max-total-tokens", "80",
                           "--output-file", str(out)])
    assert json.loads(out.read_text()) == report
    grouped, separate = report["results"]
    for row in (grouped, separate):
        assert row["samples"] == 6 and row["output_tokens"] == 6 * 8
        assert row["num_retracted_reqs_total"] == 0  # lengths are known: no over-admission
        assert 0 < row["peak_running_reqs"] < 6  # the pool could not hold every sample at once
    # a prompt's prefix may be evicted before all its samples ran: most, not all, are hits
    assert grouped["prefix_cache_hit_rate"] > 0.5 and separate["prefix_cache_hit_rate"] == 0.0
