"""torch.profiler around scheduler steps, started and stopped by control calls
(SGLang's /start_profile and /stop_profile).

The scheduler process owns the profiler, so the trace covers the steps themselves:
the host's scheduling work, the model's forward and, on CUDA, every kernel. A run
stops by /stop_profile or by itself after `num_steps` steps, and writes
`<output_dir>/<prefix><time>-<pid>.trace.json.gz` (open it in https://ui.perfetto.dev) and
`<...>.kernels.txt`, the ops sorted by their own device time (CPU time on the CPU).
The default output_dir is $ROLLSERVE_TORCH_PROFILER_DIR, else $SGLANG_TORCH_PROFILER_DIR,
else /tmp.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import List, Optional

import torch

from rollserve.core.sampling_params import InvalidRequest

logger = logging.getLogger(__name__)

ACTIVITIES = {"CPU": "CPU", "GPU": "CUDA", "CUDA": "CUDA"}


def default_output_dir() -> str:
    return (os.environ.get("ROLLSERVE_TORCH_PROFILER_DIR")
            or os.environ.get("SGLANG_TORCH_PROFILER_DIR") or "/tmp")


@dataclass
class ProfileRequest:
    output_dir: Optional[str] = None
    num_steps: Optional[int] = None  # stop by itself after this many steps
    start_step: int = 0  # steps to let pass before recording
    activities: List[str] = field(default_factory=lambda: ["CPU", "GPU"])
    with_stack: bool = False
    record_shapes: bool = False
    profile_prefix: str = ""

    def validate(self) -> None:
        if self.num_steps is not None and self.num_steps < 1:
            raise InvalidRequest("num_steps", f"must be >= 1, got {self.num_steps}")
        if self.start_step < 0:
            raise InvalidRequest("start_step", f"must be >= 0, got {self.start_step}")
        unknown = [a for a in self.activities if a.upper() not in ACTIVITIES]
        if unknown or not self.activities:
            raise InvalidRequest("activities", f"choose from {sorted(ACTIVITIES)}, got {self.activities}")
        if any(sep in self.profile_prefix for sep in ("/", os.sep)):
            raise InvalidRequest("profile_prefix", "must not contain a path separator")


class StepProfiler:
    """At most one profiling run at a time; `on_step` after each scheduler step."""

    def __init__(self):
        self.request: Optional[ProfileRequest] = None
        self.profiler = None
        self.steps_to_skip = 0
        self.steps_recorded = 0

    @property
    def active(self) -> bool:
        return self.request is not None

    def start(self, request: ProfileRequest) -> dict:
        request.validate()
        if self.active:
            return {"success": False, "message": "a profile is already running; stop_profile first"}
        request.output_dir = request.output_dir or default_output_dir()
        os.makedirs(request.output_dir, exist_ok=True)
        self.request, self.steps_to_skip, self.steps_recorded = request, request.start_step, 0
        if not self.steps_to_skip:
            self._begin()
        return {"success": True, "message": f"profiling into {request.output_dir}"
                + (f" for {request.num_steps} steps" if request.num_steps else "")}

    def on_step(self) -> None:
        if not self.active:
            return
        if self.profiler is None:
            self.steps_to_skip -= 1
            if self.steps_to_skip <= 0:
                self._begin()
            return
        self.steps_recorded += 1
        if self.request.num_steps and self.steps_recorded >= self.request.num_steps:
            self.stop()

    def stop(self) -> dict:
        if not self.active:
            return {"success": False, "message": "no profile is running; start_profile first"}
        request, profiler = self.request, self.profiler
        self.request = self.profiler = None
        if profiler is None:
            return {"success": True, "message": "stopped before start_step was reached: no trace",
                    "files": []}
        profiler.stop()
        files = self._export(profiler, request)
        logger.info("profile of %d steps written: %s", self.steps_recorded, files)
        return {"success": True, "message": f"{self.steps_recorded} steps profiled", "files": files}

    def _begin(self) -> None:
        request = self.request
        wanted = {ACTIVITIES[a.upper()] for a in request.activities}
        activities = [torch.profiler.ProfilerActivity.CPU] if "CPU" in wanted else []
        if "CUDA" in wanted and torch.cuda.is_available():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.profiler = torch.profiler.profile(activities=activities or None,
                                               with_stack=request.with_stack,
                                               record_shapes=request.record_shapes)
        self.profiler.start()

    def _export(self, profiler, request: ProfileRequest) -> List[str]:
        stem = os.path.join(request.output_dir,
                            f"{request.profile_prefix}{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        trace, table = stem + ".trace.json.gz", stem + ".kernels.txt"
        profiler.export_chrome_trace(trace)
        sort_by = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(table, "w") as f:
            f.write(profiler.key_averages().table(sort_by=sort_by, row_limit=60))
        return [trace, table]
