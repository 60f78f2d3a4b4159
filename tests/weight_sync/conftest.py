"""Two tiny Llama checkpoints of one architecture (A, and B with other random weights),
broken copies of A, and transformers' greedy answers as the reference."""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest
import torch

from tests.tiny_models import save_tiny_checkpoint

PROMPT_IDS = [504, 3458, 282, 4649, 314, 253, 1789, 30]


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, default_model_dir) -> dict:
    root = tmp_path_factory.mktemp("weight_sync")
    return {name: save_tiny_checkpoint("llama", str(root / name), default_model_dir, seed=seed)
            for name, seed in (("A", 0), ("B", 1))}


def hf_model(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(model, ids, max_new_tokens: int):
    """transformers' greedy continuation of ids, exactly max_new_tokens long."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only fight the engine's processes
    try:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens,
                                 do_sample=False, min_new_tokens=max_new_tokens, pad_token_id=0)
    finally:
        torch.set_num_threads(threads)
    return out[0, len(ids):].tolist()


def state_dict_of(path: str) -> dict:
    from safetensors.torch import load_file

    return load_file(os.path.join(path, "model.safetensors"))


def broken_copy(src: str, dst: str, kind: str) -> str:
    """A copy of checkpoint `src` with one defect: missing | extra | shape | truncated | corrupt."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    weights = os.path.join(dst, "model.safetensors")
    if kind in ("missing", "extra", "shape"):
        tensors = state_dict_of(src)
        if kind == "missing":
            del tensors["model.layers.1.mlp.up_proj.weight"]
        elif kind == "extra":
            tensors["model.layers.7.mlp.surprise.weight"] = torch.zeros(2, 2)
        else:
            name = "model.layers.0.self_attn.k_proj.weight"
            tensors[name] = torch.zeros(tensors[name].shape[0] + 1, tensors[name].shape[1])
        save_file(tensors, weights, metadata={"format": "pt"})
    elif kind == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) - 1000)
    elif kind == "corrupt":
        with open(weights, "r+b") as f:
            f.seek(8)
            f.write(b"{not json" + b" " * 20)
    else:
        raise ValueError(kind)
    return dst


def sharded_copy(src: str, dst: str) -> str:
    """`src` re-saved as two shards with a model.safetensors.index.json."""
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    os.unlink(os.path.join(dst, "model.safetensors"))
    tensors = state_dict_of(src)
    names = sorted(tensors)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, os.path.join(dst, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return dst


@contextlib.contextmanager
def tiny_server(model_path: str, log_dir, extra_args=()):
    """An httpx client on a server process serving `model_path` (a tiny checkpoint)."""
    import httpx

    from rollserve.api.server import spawn_server, wait_until_healthy

    log = open(os.path.join(str(log_dir), "server.log"), "w")
    proc, url = spawn_server(["--model-path", model_path, "--max-total-tokens", "4096",
                              "--log-level", "warning", *extra_args], log_file=log)
    try:
        wait_until_healthy(url, proc, timeout=300)  # a loaded shared CPU can take minutes
        with httpx.Client(base_url=url, timeout=120) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except Exception:
            proc.kill()
        log.close()
