"""The hand-written Prometheus exposition, without a server."""

from rollserve.api.metrics import Histogram, ServerMetrics


def test_histogram_is_cumulative_with_inf():
    hist = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(value)
    hist.observe(0.2, times=3)
    lines = hist.lines("x", 'a="b"')
    assert lines[:3] == ['x_bucket{a="b",le="0.1"} 2', 'x_bucket{a="b",le="1.0"} 6',
                         'x_bucket{a="b",le="+Inf"} 7']
    assert lines[3].startswith('x_sum{a="b"} ') and float(lines[3].split()[-1]) == \
        0.05 + 0.1 + 0.5 + 3.0 + 0.6
    assert lines[4] == 'x_count{a="b"} 7'


def test_render_reads_the_scheduler_load_and_escapes_labels():
    metrics = ServerMetrics('my "model"\n')
    metrics.on_finished({"finish_reason": {"type": "stop"}, "prompt_tokens": 10,
                         "cached_tokens": 4}, started=0.0)
    text = metrics.render({"prompt_tokens_total": 10, "generation_tokens_total": 3,
                           "num_running_reqs": 2, "num_queued_reqs": 1, "kv_used_tokens": 50,
                           "max_total_num_tokens": 200})
    label = 'model_name="my \\"model\\"\\n"'
    assert f"rollserve:prompt_tokens_total{{{label}}} 10" in text
    assert f"rollserve:num_queue_reqs{{{label}}} 1" in text
    assert f"rollserve:token_usage{{{label}}} 0.25" in text
    assert f"rollserve:cache_hit_rate{{{label}}} 0.4" in text
    assert f'rollserve:num_requests_total{{{label},finish_reason="stop"}} 1' in text
    for line in text.splitlines():
        assert line.startswith(("# HELP rollserve:", "# TYPE rollserve:", "rollserve:"))


def test_speculative_figures_only_when_speculating():
    load = {"avg_spec_accept_length": 2.5, "spec_accept_rate": 0.5, "spec_verify_ct_total": 7}
    text = ServerMetrics("m").render(load)
    assert 'rollserve:spec_accept_length{model_name="m"} 2.5' in text
    assert 'rollserve:spec_accept_rate{model_name="m"} 0.5' in text
    assert 'rollserve:spec_verify_ct_total{model_name="m"} 7' in text
    assert "spec_" not in ServerMetrics("m").render({})
