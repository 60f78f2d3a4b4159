"""The serving benchmark against the shared test server, with a tiny load."""

import json

import pytest

from rollserve.bench import serving

pytestmark = pytest.mark.slow


def test_random_requests_lengths():
    specs = serving.random_requests(50, input_len=40, output_len=10, range_ratio=0.5, vocab=1000,
                                    seed=0)
    assert all(20 <= len(s.input_ids) <= 40 and 5 <= s.output_len <= 10 for s in specs)
    assert all(100 <= t < 900 for s in specs for t in s.input_ids)
    assert len({len(s.input_ids) for s in specs}) > 1
    again = serving.random_requests(50, 40, 10, 0.5, 1000, seed=0)
    assert [s.input_ids for s in again] == [s.input_ids for s in specs]


@pytest.mark.parametrize("load", [["--request-rate", "inf"],
                                  ["--request-rate", "50", "--max-concurrency", "2"]])
def test_bench_serving(server, tmp_path, capsys, load):
    out_file = tmp_path / "bench.json"
    report = serving.main(["--base-url", server.url, "--num-prompts", "6",
                           "--random-input-len", "24", "--random-output-len", "5",
                           "--output-file", str(out_file), *load])
    printed = capsys.readouterr().out
    for label in ("Serving Benchmark Result", "Request throughput (req/s):",
                  "Output token throughput (tok/s):", "Median TTFT (ms):", "P99 ITL (ms):"):
        assert label in printed
    saved = json.loads(out_file.read_text())
    assert saved["completed"] == 6 and saved["failed"] == 0
    assert saved["total_output_tokens"] == 6 * 5  # ignore_eos: exactly the asked lengths
    assert saved["total_input_tokens"] == 6 * 24
    assert 0 < saved["median_ttft_ms"] <= saved["mean_e2e_latency_ms"] * 1.5
    assert saved["mean_itl_ms"] > 0 and saved["output_throughput"] > 0
    assert report["completed"] == saved["completed"]
    assert saved["server"]["max_total_num_tokens"] == 20000
