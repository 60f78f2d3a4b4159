"""rollserve: an LLM inference engine that lives beside an RL training job."""

from rollserve.version import __version__

__all__ = ["Engine", "__version__"]


def __getattr__(name):
    # Lazy, so `import rollserve` (e.g. from the CLI or a client) does not load torch.
    if name == "Engine":
        from rollserve.rollout.engine import Engine

        return Engine
    raise AttributeError(name)
