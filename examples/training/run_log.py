"""Metrics of a run: one JSON line per step in out_dir/metrics.jsonl (what the
plot reads) and the same numbers in wandb (offline unless told otherwise)."""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict


class RunLog:
    def __init__(self, out_dir: str, config: Dict[str, Any], wandb_mode: str, project: str,
                 run_name: str):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.file = open(self.path, "w")
        self.run = None
        if wandb_mode != "disabled":
            try:
                import wandb
            except ImportError:
                warnings.warn("wandb is not installed (pip install -e .[train]); "
                              "logging to metrics.jsonl only")
            else:
                self.run = wandb.init(project=project, name=run_name, mode=wandb_mode,
                                      dir=out_dir, config=config)

    def log(self, step: int, metrics: Dict[str, Any]) -> None:
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: Dict[str, Any]) -> None:
        self.file.write(json.dumps({"summary": values}) + "\n")
        self.file.flush()
        if self.run is not None:
            self.run.summary.update(values)

    def close(self) -> None:
        self.file.close()
        if self.run is not None:
            self.run.finish()

    def __enter__(self) -> "RunLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
