"""The trainer's side: the in-process Engine and the HTTP RolloutClient."""

import importlib

# Lazy, so that importing one of them does not load the others (Engine loads torch).
_EXPORTS = {"RolloutClient": "rollserve.rollout.client",
            "AsyncRolloutClient": "rollserve.rollout.async_client",
            "Sample": "rollserve.rollout.sample",
            "Trajectory": "rollserve.rollout.trajectory",
            "RolloutError": "rollserve.rollout.errors"}
__all__ = ["Engine", *_EXPORTS]


def __getattr__(name):
    if name == "Engine":
        from rollserve.rollout.engine import Engine

        return Engine
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
