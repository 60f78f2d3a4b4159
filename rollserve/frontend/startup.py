"""Start-up resolution of the server arguments, done once before any process starts.

What the user left open is decided here (the embedded default model; a pooling model's
overrides: is_embedding on, the prefix cache off where reusing a prefix would be wrong),
and the result is a new frozen ServerArgs; nothing changes it later.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

from rollserve.executor.pooling_model import PoolingSpec, default_embedding_model_path, pooling_spec
from rollserve.frontend.default_model import default_model_path
from rollserve.frontend.server_args import ServerArgs

logger = logging.getLogger(__name__)


def resolve_model_path(args: ServerArgs) -> str:
    if args.model_path:
        return args.model_path
    if args.is_embedding:  # the embedded all-MiniLM-L6-v2
        return default_embedding_model_path()
    return default_model_path()


def detect_pooling(args: ServerArgs) -> Optional[PoolingSpec]:
    """The pooling of an embedding / reward model at args.model_path; None for generation."""
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(args.model_path, trust_remote_code=args.trust_remote_code)
    spec = pooling_spec(args.model_path, args.is_embedding, hf_config)
    if spec is not None and not spec.causal and (args.context_length or 0) > hf_config.max_position_embeddings:
        raise ValueError(f"context_length: {args.context_length} is beyond the "
                         f"{hf_config.max_position_embeddings} positions this encoder has learned")
    return spec


def resolve_server_args(args: ServerArgs) -> ServerArgs:
    """args with the model path filled in and a pooling model's overrides applied; raises
    ValueError naming the flag when the machine cannot run them (args.check_machine)."""
    args = dataclasses.replace(args, model_path=resolve_model_path(args))
    args.check_machine()
    spec = detect_pooling(args)
    if spec is None:
        return args
    changes = {"is_embedding": True}
    if not spec.allows_prefix_cache and not args.disable_radix_cache:
        logger.info("%s pooling on a %s model: the prefix cache is off", spec.method,
                    "causal" if spec.causal else "bidirectional")
        changes["disable_radix_cache"] = True
    return dataclasses.replace(args, **changes)
