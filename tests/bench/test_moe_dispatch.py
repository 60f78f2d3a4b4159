"""The exchange bench (rollserve/bench/moe_dispatch.py) on two gloo ranks at a tiny shape:
both paths run and its byte accounting follows the routing."""

import pytest

from rollserve.bench.moe_dispatch import block_shape, run

TINY = {"num_experts": 4, "top_k": 2, "hidden": 32, "intermediate": 16}


@pytest.mark.multiprocess
def test_both_exchanges_timed_on_two_ranks():
    rows = run("tiny", 2, [3, 8], "cpu", iters=2, shape=TINY)
    row_bytes = TINY["hidden"] * 4  # float32 on CPU
    for row, tokens in zip(rows, (3, 8)):
        assert row["tokens_per_rank"] == tokens and row["all_gather_ms"] > 0 < row["all_to_all_ms"]
        assert row["all_gather_bytes_sent"] == 3 * tokens * row_bytes  # (P-1)T + 2(P-1)T rows
        sent = row["all_to_all_bytes_sent"] // (2 * row_bytes)  # copies that left rank 0
        assert row["all_to_all_bytes_sent"] % (2 * row_bytes) == 0 and 0 <= sent <= tokens * 2


def test_block_shape_from_the_bench_configs():
    assert block_shape("qwen3-30b-a3b") == {"num_experts": 128, "top_k": 8, "hidden": 2048,
                                            "intermediate": 768}
