"""The MoE bench tools on CPU: the expert-distribution plot from a dump, and the
active-parameter accounting of the roofline (Qwen3-30B-A3B is ~3.3B active of ~30.5B)."""

import os

import torch

from rollserve.bench.expert_distribution_plot import imbalance, plot
from rollserve.bench.moe import active_bytes


def test_plot_from_a_dump(tmp_path):
    counts = torch.zeros(3, 8, dtype=torch.int64)
    counts[1] = torch.tensor([4, 4, 4, 4, 4, 4, 4, 4])
    counts[2] = torch.tensor([16, 0, 8, 0, 0, 0, 8, 0])
    dump = tmp_path / "dump.pt"
    torch.save({"rank": 0, "logical_count": counts}, dump)
    result = plot(str(dump), str(tmp_path / "plot.png"))
    assert os.path.getsize(tmp_path / "plot.png") > 1000
    assert result["imbalance"] == [0.0, 1.0, 4.0]
    assert imbalance(counts).tolist() == [0.0, 1.0, 4.0]


def test_active_parameters_of_a_decode_step():
    one = active_bytes("qwen3-30b-a3b", 1)
    assert 30.4e9 < one["total_params"] < 30.6e9
    assert 3.2e9 < one["active_params"] < 3.5e9  # the "A3B"
    assert one["experts_read_per_layer"] == 8
    many = active_bytes("qwen3-30b-a3b", 256)
    assert many["active_params"] > 0.99 * many["total_params"]  # a big batch touches every expert
