import os

import pytest

from tests.tiny_models import save_tiny_checkpoint


@pytest.fixture(scope="session")
def default_model_dir() -> str:
    """The embedded SmolLM2 converted to HF format (cached across runs in ~/.cache/rollserve)."""
    from rollserve.frontend.default_model import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, default_model_dir) -> dict:
    """arch -> folder of a tiny random checkpoint (float32) with SmolLM2's tokenizer."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: save_tiny_checkpoint(arch, os.path.join(root, arch), default_model_dir, seed=i)
            for i, arch in enumerate(("llama", "qwen2", "qwen3"))}


@pytest.fixture(scope="session")
def tiny_vlms(tmp_path_factory, default_model_dir) -> dict:
    """qwen2_vl | qwen2_5_vl -> folder of a tiny random VLM (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import save_tiny_vlm

    root = tmp_path_factory.mktemp("tiny-vlm")
    return {arch: save_tiny_vlm(arch, os.path.join(root, arch), default_model_dir, seed=i)
            for i, arch in enumerate(("qwen2_vl", "qwen2_5_vl"))}
