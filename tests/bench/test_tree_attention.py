"""bench/tree_attention.py's --smoke run: the Triton tree kernel and the torch reference on tiny
verify batches, both checked against the float32 reference (CUDA, or Triton's interpreter with
TRITON_INTERPRET=1; skipped elsewhere)."""

import os

import pytest
import torch

pytestmark = pytest.mark.gpu
if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") == "1"):
    pytest.skip("needs CUDA (or TRITON_INTERPRET=1)", allow_module_level=True)
pytest.importorskip("triton")

from rollserve.bench.tree_attention import main  # noqa: E402


def test_smoke_run_reports_matching_outputs(tmp_path):
    out = tmp_path / "tree_attention.json"
    report = main(["--smoke", "--out", str(out)])
    assert report["all_ok"] and out.exists()
    assert [r["case"] for r in report["rows"]] == ["b2_ctx40_n5", "b1_ctx300_n4"]
    for row in report["rows"]:
        assert row["kernel_err"] < 1e-2 and row["torch_err"] < 1e-2 and row["kernel_us"] > 0
    assert report["rows"][1]["splits"] == 2  # 300 keys: the split-K path ran
