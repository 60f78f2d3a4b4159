"""Plots an expert-distribution dump (/dump_expert_distribution_record): a layer x expert
heat map of token counts and each MoE layer's imbalance (busiest expert / mean).

    python -m rollserve.bench.expert_distribution_plot DUMP.pt --output plot.png
"""

from __future__ import annotations

import argparse

import torch


def imbalance(counts: torch.Tensor) -> torch.Tensor:
    """Per layer: max over experts / mean over experts (1 = perfectly balanced; 0 for dense)."""
    counts = counts.double()
    mean = counts.mean(dim=-1)
    return torch.where(mean > 0, counts.max(dim=-1).values / mean.clamp(min=1e-12), 0.0)


def plot(dump_path: str, output: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = torch.load(dump_path)["logical_count"]
    ratio = imbalance(counts)
    fig, (heat, bars) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    image = heat.imshow(counts.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    heat.set_xlabel("expert")
    heat.set_ylabel("layer")
    heat.set_title(f"tokens routed per expert ({int(counts.sum())} in all)")
    fig.colorbar(image, ax=heat)
    bars.barh(range(len(ratio)), ratio.numpy())
    bars.invert_yaxis()
    bars.set_xlabel("max / mean")
    bars.set_title("imbalance per layer")
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return {"output": output, "imbalance": [round(float(r), 3) for r in ratio]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dump")
    parser.add_argument("--output", default="expert_distribution.png")
    args = parser.parse_args()
    print(plot(args.dump, args.output))


if __name__ == "__main__":
    main()
