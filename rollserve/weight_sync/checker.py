"""SGLang's /weights_checker, /post_process_weights and /update_weight_version, run in the
scheduler process between steps.

weights_checker lets a trainer prove that a weight sync landed: `snapshot` copies every
parameter to host memory, `reset_tensors` overwrites them with random values (to
simulate corruption), `compare` checks the live weights against the snapshot, and
`compare_checksum` checks sha256 digests of named tensors (HF names, bytes of the
tensor as stored) that the trainer computed on its side. A mismatch answers
success false, naming the tensors.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Dict, Optional

import torch

from rollserve.executor.models.weights import checkpoint_targets, full_tensor

logger = logging.getLogger(__name__)
CONTROL_CALLS = ("weights_checker", "post_process_weights", "update_weight_version")
ACTIONS = ("snapshot", "reset_tensors", "reset_param", "compare", "compare_checksum")
MAX_NAMES_SHOWN = 5


def tensor_checksum(tensor: torch.Tensor) -> str:
    """sha256 over the tensor's bytes as stored (SGLang's and slime's digest)."""
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


class WeightChecker:
    def __init__(self, runner, scheduler, send_outputs):
        self.runner = runner
        self.scheduler = scheduler
        self.send_outputs = send_outputs  # aborted requests' final outputs go out through it
        self.snapshot: Optional[Dict[str, torch.Tensor]] = None

    def control_calls(self) -> dict:
        """This service's control calls by name (the scheduler process's registry takes them)."""
        return {name: getattr(self, name) for name in CONTROL_CALLS}

    def _params(self):
        return list(self.runner.model.named_parameters())

    # ---- control calls ------------------------------------------------------------------------
    def weights_checker(self, action: str, checksums: Optional[Dict[str, str]] = None) -> dict:
        if action not in ACTIONS:
            return {"success": False, "message": f"action must be one of {ACTIONS}, got {action!r}"}
        if action == "snapshot":
            self.snapshot = {name: p.detach().to("cpu", copy=True) for name, p in self._params()}
            return {"success": True, "message": f"snapshot of {len(self.snapshot)} tensors"}
        if action in ("reset_tensors", "reset_param"):  # reset_param: SGLang's older name
            generator = torch.Generator(device="cpu").manual_seed(0)
            with torch.no_grad():
                for _, p in self._params():
                    noise = torch.rand(p.shape, generator=generator, dtype=torch.float32)
                    p.copy_(noise.to(p.dtype) if p.dtype.is_floating_point else noise.gt(0.5))
            self.scheduler.weights_changed("retract")  # no KV of the old weights is reused
            return {"success": True, "message": "every parameter was overwritten with random values"}
        if action == "compare":
            return self._compare()
        return self._compare_checksums(checksums or {})

    def _compare(self) -> dict:
        if self.snapshot is None:
            return {"success": False, "message": "no snapshot: call action 'snapshot' first"}
        live = dict(self._params())
        wrong = sorted(n for n, t in self.snapshot.items()
                       if n not in live or not torch.equal(t, live[n].detach().cpu()))
        wrong += sorted(n for n in live if n not in self.snapshot)
        if wrong:
            return {"success": False, "message": f"{len(wrong)} tensors differ from the snapshot: "
                                                 f"{_names(wrong)}"}
        return {"success": True, "message": f"all {len(live)} tensors equal the snapshot"}

    def _compare_checksums(self, checksums: Dict[str, str]) -> dict:
        if not isinstance(checksums, dict) or not checksums:
            return {"success": False, "message": "compare_checksum needs checksums: "
                                                 "{name: sha256 hex digest}"}
        targets = getattr(self.runner.model, "_targets", None) or checkpoint_targets(self.runner.model)
        missing, wrong = [], []
        for name, digest in sorted(checksums.items()):
            if name not in targets:
                missing.append(name)
                continue
            value = full_tensor(self.runner.model, name)  # whole under TP
            if tensor_checksum(value) != digest:
                wrong.append(name)
        if missing or wrong:
            parts = ([f"unknown tensors {_names(missing)}"] if missing else []) + \
                    ([f"checksum mismatch for {_names(wrong)}"] if wrong else [])
            return {"success": False, "message": "; ".join(parts)}
        return {"success": True, "message": f"{len(checksums)} checksums match"}

    def post_process_weights(self, restore_weights_before_load: bool = False,
                                 post_process_quantization: bool = False) -> dict:
        """SGLang runs the quantization methods' post-load processing here. rollserve's
        models hold plain dense weights, loaded in place, so there is nothing to process or
        restore: the call succeeds and says so (slime calls it after every sync)."""
        return {"success": True, "message": "dense unquantized weights: nothing to post-process"
                                            + (" or restore" if restore_weights_before_load else "")}

    def update_weight_version(self, new_version: str, abort_all_requests: bool = False) -> dict:
        """Change the label only; running requests keep running unless asked to abort."""
        if abort_all_requests:
            self.send_outputs(self.scheduler.abort_all_now())
        self.scheduler.weight_version = str(new_version)
        return {"success": True, "message": f"Weight version updated to {new_version}",
                "new_version": str(new_version)}


def _names(names) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")
