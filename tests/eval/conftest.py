"""A server on a tiny random model for the eval tests, and checkpoint folders made
from it: perturbed copies (their metrics differ) and broken ones."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from rollserve.api.server import spawn_server, wait_until_healthy
from rollserve.rollout.launch import stop_process_tree
from tests.tiny_models import save_tiny_checkpoint

SERVER_ARGS = ["--max-total-tokens", "20000"]
WEIGHTS = "model.safetensors"


def perturbed_copy(base_dir: str, out_dir: str, scale: float, seed: int) -> str:
    """base_dir with every weight w replaced by w * (1 + scale * noise)."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS))
    generator = torch.Generator().manual_seed(seed)
    tensors = load_file(os.path.join(base_dir, WEIGHTS))
    noisy = {name: t * (1 + scale * torch.randn(t.shape, generator=generator))
             for name, t in tensors.items()}
    save_file(noisy, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
    return out_dir


def broken_copy(base_dir: str, out_dir: str) -> str:
    """base_dir with one weight of the wrong shape: the server must refuse it."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(base_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS))
    tensors = load_file(os.path.join(base_dir, WEIGHTS))
    name = next(n for n in sorted(tensors) if n.endswith("mlp.down_proj.weight"))
    tensors[name] = tensors[name][:, :-1].contiguous()
    save_file(tensors, os.path.join(out_dir, WEIGHTS), metadata={"format": "pt"})
    return out_dir


@pytest.fixture(scope="session")
def eval_model_dir(tmp_path_factory, default_model_dir) -> str:
    return save_tiny_checkpoint("llama", str(tmp_path_factory.mktemp("eval-model") / "base"),
                                default_model_dir, seed=11)


@pytest.fixture(scope="session")
def eval_server(tmp_path_factory, eval_model_dir):
    """(base URL, model dir). Tests may load other weights; each loads what it needs."""
    log_path = tmp_path_factory.mktemp("eval-server") / "server.log"
    with open(log_path, "w") as log:
        proc, url = spawn_server(["--model-path", eval_model_dir, *SERVER_ARGS], log_file=log)
        try:
            wait_until_healthy(url, proc, timeout=300)
        except Exception:
            stop_process_tree(proc)
            raise RuntimeError(f"eval server did not start:\n{log_path.read_text()[-3000:]}")
        try:
            yield url
        finally:
            stop_process_tree(proc)


@pytest.fixture
def client(eval_server):
    from rollserve.rollout.client import RolloutClient

    with RolloutClient(eval_server, progress=False, timeout=120) as c:
        yield c
