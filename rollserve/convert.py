"""`rollserve convert`: re-shard a Hugging Face checkpoint into per-rank files for a
tensor-parallel size (SGLang's convert.py flags: --hf-ckpt-path, --save-path,
--model-parallel, --n-experts), read back with --load-format sharded_state.

    rollserve convert --hf-ckpt-path HF_DIR --save-path OUT --model-parallel 4
    rollserve serve --model-path OUT --tp-size 4 --load-format sharded_state

With --n-experts (the MoE model's number of routed experts), each rank's file holds its
experts whole (expert parallel, E / model-parallel of them), served with --ep-size equal
to --tp-size; without it a MoE model's files hold each rank's rows of every expert.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil

import torch

from rollserve.executor.model_loader import load_model, resolve_dtype
from rollserve.executor.parallel_state import as_rank
from rollserve.executor.sharded_state import LAYOUT_FILE, rank_file

logger = logging.getLogger(__name__)

# where HF configs keep the number of routed experts (Qwen3-MoE, Mixtral, DeepSeek)
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")


def write_sharded_checkpoint(hf_path: str, save_path: str, tp_size: int, dtype: torch.dtype,
                             model_class_of=None, ep_size: int = 1) -> None:
    """One safetensors file per rank with that rank's parameters, plus the folder's config
    and tokenizer files; ranks are built one at a time (one rank's slices in memory).
    ep_size: 1, or tp_size for whole experts per rank (layers/moe_parallel.py)."""
    from safetensors.torch import save_file

    os.makedirs(save_path, exist_ok=True)
    kwargs = {"model_class_of": model_class_of} if model_class_of else {}
    for rank in range(tp_size):
        with as_rank(rank, tp_size, ep_size=ep_size):
            model = load_model(hf_path, dtype, "cpu", **kwargs)
        state = {name: (param.data if rows is None else param.data[rows]).contiguous()
                 for name, (param, rows) in model._targets.items()}
        save_file(state, rank_file(save_path, rank), metadata={
            "tp_rank": str(rank), "tp_size": str(tp_size), "ep_size": str(ep_size)})
        logger.info("rank %d of %d: %d tensors -> %s", rank, tp_size, len(state),
                    rank_file(save_path, rank))
        del model, state
    for name in os.listdir(hf_path):  # config, tokenizer, generation config, chat template
        source = os.path.join(hf_path, name)
        if os.path.isfile(source) and not name.endswith((".safetensors", ".bin", ".pt")) \
                and name != "model.safetensors.index.json":
            shutil.copy2(source, os.path.join(save_path, name))
    with open(os.path.join(save_path, LAYOUT_FILE), "w") as f:
        json.dump({"tp_size": tp_size, "ep_size": ep_size}, f)


def add_convert_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hf-ckpt-path", required=True, help="the Hugging Face model folder")
    parser.add_argument("--save-path", required=True, help="where the per-rank files go")
    parser.add_argument("--model-parallel", "--tp-size", dest="model_parallel", type=int,
                        required=True, help="the tensor-parallel size the files are cut for")
    parser.add_argument("--n-experts", type=int, default=None,
                        help="the MoE model's number of routed experts: cut whole experts per "
                             "rank (serve with --ep-size equal to --tp-size)")
    parser.add_argument("--dtype", default="auto",
                        help="the files' dtype: float32, bfloat16, float16 (default: the "
                             "checkpoint's)")


def run_convert(ns: argparse.Namespace) -> int:
    from transformers import AutoConfig

    from rollserve.core.logging_setup import configure_logging

    configure_logging("info", prefix="convert")
    if ns.model_parallel < 1:
        raise SystemExit(f"error: --model-parallel: must be >= 1, got {ns.model_parallel}")
    if not os.path.isdir(ns.hf_ckpt_path):
        raise SystemExit(f"error: --hf-ckpt-path: {ns.hf_ckpt_path!r} is not a folder")
    config = AutoConfig.from_pretrained(ns.hf_ckpt_path)
    ep_size = ns.model_parallel if ns.n_experts is not None else 1
    if ns.n_experts is not None:
        held = next((getattr(config, k) for k in EXPERT_COUNT_FIELDS if getattr(config, k, None)),
                    None)
        if held != ns.n_experts:
            raise SystemExit(f"error: --n-experts: {ns.hf_ckpt_path} has {held or 'no'} routed "
                             f"experts, not {ns.n_experts}")
        if ns.n_experts % ns.model_parallel:
            raise SystemExit(f"error: --n-experts: {ns.n_experts} experts do not split evenly "
                             f"over --model-parallel {ns.model_parallel}")
    if ns.dtype == "auto":  # keep what the checkpoint holds
        held = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = held if isinstance(held, torch.dtype) else torch.float32
    else:
        try:
            dtype = resolve_dtype(config, ns.dtype, "cpu")
        except ValueError as e:
            raise SystemExit(f"error: --dtype: {e}")
    try:
        write_sharded_checkpoint(ns.hf_ckpt_path, ns.save_path, ns.model_parallel, dtype,
                                 ep_size=ep_size)
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    return 0

