"""Checkpoint layouts the server cannot load as they are, and what makes them loadable.

A training framework's own checkpoint often holds sharded training state rather than HF
weights. These are recognised so that the watcher reports "not scorable: <what to do>"
instead of a load failure:

* verl (FSDP): global_step_N/actor/model_world_size_W_rank_R.pt, with config and
  tokenizer (no weights) in actor/huggingface. Merge the shards with verl's model merger,
  or have verl save HF weights at every checkpoint (save_contents with 'hf_model').
* verl (Megatron): global_step_N/actor/dist_ckpt/ (torch distributed checkpoint).
* DeepSpeed ZeRO (OpenRLHF's global_stepN): mp_rank_00_model_states.pt and
  *zero_pp_rank_*_optim_states.pt. OpenRLHF writes HF weights next to it with
  --save_hf_ckpt (global_stepN_hf), which the watcher scores instead.
* torch.distributed.checkpoint (e.g. FSDP SHARDED_STATE_DICT): .metadata + *.distcp.
"""

from __future__ import annotations

import os
import re
from typing import Optional

FSDP_SHARD = re.compile(r"model_world_size_(\d+)_rank_(\d+)\.pt")
DEEPSPEED_FILES = re.compile(r"mp_rank_\d+_model_states\.pt|.*zero_pp_rank_\d+_mp_rank_\d+_optim_states\.pt")
VERL_HF_OPTION = ("actor_rollout_ref.actor.checkpoint.save_contents="
                  "['model','optimizer','extra','hf_model']")


def not_scorable_reason(path: str, max_depth: int = 2) -> Optional[str]:
    """Why the folder at `path` can never be loaded as it is (with what to run), or None
    when it is not a known sharded layout."""
    for folder, dirs, names in os.walk(path):
        depth = os.path.relpath(folder, path).count(os.sep) + (folder != path)
        if depth >= max_depth:
            dirs[:] = []
        if any(FSDP_SHARD.fullmatch(n) for n in names):
            return _verl_fsdp(folder)
        if "dist_ckpt" in dirs and os.path.basename(folder) == "actor":
            return _verl_megatron(folder)
        if any(DEEPSPEED_FILES.fullmatch(n) for n in names):
            return ("not scorable: DeepSpeed ZeRO shards only; save HF weights as well "
                    "(OpenRLHF: --save_hf_ckpt writes global_stepN_hf, which is scored) or "
                    "convert them with DeepSpeed's zero_to_fp32.py")
        if ".metadata" in names and any(n.endswith(".distcp") for n in names):
            return (f"not scorable: torch.distributed.checkpoint shards in {folder}; save a "
                    "full (HF) state dict, or convert them with "
                    "torch.distributed.checkpoint.format_utils.dcp_to_torch_save")
    return None


def _verl_fsdp(actor: str) -> str:
    target = os.path.join(actor, "huggingface")
    return ("not scorable: verl FSDP shards only; merge them into HF weights with "
            f"`python -m verl.model_merger merge --backend fsdp --local_dir {actor} "
            f"--target_dir {target}` (the watcher then scores the folder), or have verl save "
            f"HF weights at every checkpoint: {VERL_HF_OPTION}")


def _verl_megatron(actor: str) -> str:
    target = os.path.join(actor, "huggingface")
    return ("not scorable: verl Megatron shards only; merge them with "
            f"`python -m verl.model_merger merge --backend megatron --local_dir {actor} "
            f"--target_dir {target}`, or have verl save HF weights: {VERL_HF_OPTION}")
