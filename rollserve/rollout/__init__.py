"""The trainer's side: the in-process Engine and (soon) RolloutClient."""


def __getattr__(name):
    if name == "Engine":
        from rollserve.rollout.engine import Engine

        return Engine
    raise AttributeError(name)
