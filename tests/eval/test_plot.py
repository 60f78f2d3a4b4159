"""metrics.png (#26 item 8): one panel per distinct quantity, fixed [0, 1] axes for bounded
metrics, a labelled baseline, failures drawn by cause; a retried incomplete write shows
its score, not a failure."""

import math

import pytest

from rollserve.eval.plot import build_figure, panels, plot_metrics
from rollserve.eval.report import result_row
from rollserve.eval.tasks.base import TaskResult


def ok(step, name, task, **metrics):
    result = TaskResult(task=task, kind="x", metrics=metrics, samples=[], num_examples=3)
    return result_row(step, name, f"/r/{name}", task, result=result)


def ppl(step, name, bpb):
    # one corpus: 1000 bytes, 400 tokens, 200 words -> all three follow from the loglikelihood
    nll = bpb * 1000 * math.log(2)
    return ok(step, name, "perplexity", bits_per_byte=bpb, perplexity=math.exp(nll / 400),
              word_perplexity=math.exp(nll / 200))


def bad(step, name, task, status, error="boom"):
    return result_row(step, name, f"/r/{name}", task, error=error, status=status)


@pytest.fixture
def rows():
    out = []
    for step, name, acc, bpb in ((0, "baseline", 0.30, 1.30), (100, "checkpoint-100", 0.34, 1.25),
                                 (200, "checkpoint-200", 0.36, 1.21)):
        out += [ok(step, name, "facts", acc=acc, acc_norm=acc + 0.02), ppl(step, name, bpb),
                ok(step, name, "arithmetic", exact_match=acc / 2, **{"pass@1": acc / 2,
                                                                      "pass@2": acc, "maj@1": acc / 2})]
    for task in ("facts", "perplexity", "arithmetic"):
        out.append(bad(300, "checkpoint-300", task, "failed", "HTTP 400: bad shape"))
        out.append(bad(400, "checkpoint-400", task, "incomplete", "model.safetensors holds 10 of 99"))
        out.append(bad(500, "global_step_500", task, "not_scorable", "not scorable: verl FSDP"))
    # an incomplete write at 250, scored once the writer finished
    out.append(bad(250, "checkpoint-250", "facts", "incomplete"))
    out.append(ok(250, "checkpoint-250", "facts", acc=0.37, acc_norm=0.38))
    return out


def test_one_panel_per_quantity(rows):
    titles = [p.title for p in panels(rows)]
    assert titles == ["arithmetic: pass@k", "arithmetic: maj@k", "arithmetic: exact_match",
                      "facts: acc", "facts: acc_norm",
                      "perplexity: bits per byte (right: token perplexity)"]
    by_title = {p.title: p for p in panels(rows)}
    assert by_title["arithmetic: pass@k"].metrics == ["pass@1", "pass@2"]
    assert all(p.bounded for p in panels(rows) if not p.title.startswith("perplexity"))
    assert not by_title["perplexity: bits per byte (right: token perplexity)"].bounded


def test_figure_axes_baseline_and_failure_causes(rows):
    fig = build_figure(rows)
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert axes["facts: acc"].get_ylim() == pytest.approx((-0.03, 1.03))
    ppl_ax = axes["perplexity: bits per byte (right: token perplexity)"]
    assert ppl_ax.get_ylim()[1] < 2  # bits per byte, not perplexity, on the left
    right = [child for child in ppl_ax.get_children() if type(child).__name__ == "SecondaryAxis"]
    assert len(right) == 1 and right[0].get_ylabel() == "token perplexity"
    assert "baseline" in [t.get_text() for t in axes["facts: acc"].texts]
    legend = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert legend == ["baseline (step 0)", "broken checkpoint", "incomplete write", "not scorable"]
    # the incomplete write at 250 was scored: a point, not a failure line
    facts_points = [x for line in axes["facts: acc"].get_lines() for x in line.get_xdata()]
    assert 250 in facts_points
    failure_x = sorted({line.get_xdata()[0] for line in axes["facts: acc"].get_lines()
                        if line.get_linestyle() != "-" and len(set(line.get_xdata())) == 1
                        and line.get_xdata()[0] != 0})
    assert failure_x == [300, 400, 500]


def test_png_is_written(tmp_path, rows):
    path = plot_metrics(rows, str(tmp_path / "metrics.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
