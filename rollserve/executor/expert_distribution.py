"""Per layer, per expert token counts of a MoE model over a recorded window (SGLang's
/start_expert_distribution_record, /stop_..., /dump_...), and what the server reports about
the model's experts.

The MoE blocks call `record(layer_id, topk_ids)` through ctx.moe_recorder, which the runner
sets only while recording, so serving pays nothing otherwise. Counts stay on the device
(one bincount per layer and forward) until the dump. The dump is SGLang's "stat" layout:
a torch.save'd dict with `logical_count` [num_layers, num_experts] (dense layers count zero).
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Callable, Dict, Optional

import torch

DUMP_DIR_ENV = "ROLLSERVE_EXPERT_DISTRIBUTION_RECORDER_DIR"


def moe_summary(model, mla_on: bool) -> dict:
    """architecture, num_experts, top_k, MoE layers and whether MLA runs (server / model info)."""
    config = getattr(model, "config", None)
    architectures = list(getattr(config, "architectures", None) or [type(model).__name__])
    info = model.moe_info() if hasattr(model, "moe_info") else {"num_experts": 0, "top_k": 0,
                                                                 "moe_layers": []}
    return {"architecture": architectures[0], "num_experts": info["num_experts"],
            "num_experts_per_tok": info["top_k"], "num_moe_layers": len(info["moe_layers"]),
            "mla": mla_on}


class ExpertDistributionRecorder:
    def __init__(self, num_layers: int, num_experts: int, device: torch.device):
        self.num_layers, self.num_experts = num_layers, num_experts
        self.counts = torch.zeros(num_layers, num_experts, dtype=torch.int64, device=device)
        self.recording = False
        self.window_start: Optional[float] = None

    @classmethod
    def for_model(cls, model, device: torch.device) -> Optional["ExpertDistributionRecorder"]:
        info = model.moe_info() if hasattr(model, "moe_info") else None
        if not info or not info["num_experts"]:
            return None
        return cls(model.num_layers, info["num_experts"], device)

    def record(self, layer_id: int, topk_ids: torch.Tensor) -> None:
        if self.recording:
            self.counts[layer_id] += torch.bincount(topk_ids.reshape(-1), minlength=self.num_experts)

    # ---- control calls (scheduler process) ------------------------------------------
    def start(self) -> dict:
        self.counts.zero_()
        self.recording, self.window_start = True, time.time()
        return {"success": True, "message": "expert distribution recording started"}

    def stop(self) -> dict:
        self.recording = False
        return {"success": True, "message": "expert distribution recording stopped"}

    def dump(self, output_dir: Optional[str] = None) -> dict:
        """Writes the window's counts to <dir>/expert_distribution_recorder_<time>.pt and
        returns them (the window keeps recording if it was)."""
        directory = output_dir or os.environ.get(DUMP_DIR_ENV) or tempfile.gettempdir()
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"expert_distribution_recorder_{time.time()}.pt")
        counts = self.counts.cpu()
        torch.save({"rank": 0, "logical_count": counts, "window_start": self.window_start,
                    "window_end": time.time()}, path)
        return {"success": True, "message": f"dumped to {path}", "path": path,
                "logical_count": counts.tolist()}


def expert_distribution_calls(recorder: Optional[ExpertDistributionRecorder]
                              ) -> Dict[str, Callable[..., dict]]:
    """The control calls (name -> handler) the scheduler process registers."""
    def unavailable(**_):
        return {"success": False, "message": "the served model has no MoE layers"}

    if recorder is None:
        return {name: unavailable for name in ("start_expert_distribution_record",
                                               "stop_expert_distribution_record",
                                               "dump_expert_distribution_record")}
    return {"start_expert_distribution_record": recorder.start,
            "stop_expert_distribution_record": recorder.stop,
            "dump_expert_distribution_record": recorder.dump}
