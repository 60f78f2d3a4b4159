"""Owns the model and the KV memory; turns a ScheduleBatch into logits.

Builds one ForwardContext per forward (positions, slot mapping, sequence and
prefix lengths) and hands it to the model explicitly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List

import torch
from transformers import AutoConfig

from rollserve.engine.config import ServerArgs
from rollserve.engine.forward_context import ForwardContext
from rollserve.engine.kv_pool import KVPool, ReqToTokenPool, SlotAllocator
from rollserve.engine.model_loader import load_model, resolve_dtype
from rollserve.engine.schedule_batch import ScheduleBatch

logger = logging.getLogger(__name__)

CPU_DEFAULT_MEM_FRACTION = 0.1
CUDA_DEFAULT_MEM_FRACTION = 0.85


@dataclass
class ForwardOutput:
    logits: torch.Tensor  # [sum of len(entry.logit_rows)] x vocab, float32
    row_offsets: List[int]  # entry i's logits are logits[row_offsets[i] : row_offsets[i+1]]


class ModelRunner:
    def __init__(self, args: ServerArgs, model_path: str):
        self.args = args
        self.device = torch.device(args.resolved_device())
        self.hf_config = AutoConfig.from_pretrained(model_path, trust_remote_code=args.trust_remote_code)
        self.dtype = resolve_dtype(self.hf_config, args.dtype, self.device.type)
        self.context_len = args.context_length or getattr(self.hf_config, "max_position_embeddings", 4096)
        logger.info("loading weights from %s (%s, %s)", model_path, self.dtype, self.device)
        self.model = load_model(model_path, self.dtype, str(self.device), args.load_format)
        self.vocab_size = self.model.vocab_size
        self._init_memory()

    def _init_memory(self) -> None:
        m = self.model
        per_token = KVPool.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, self.dtype)
        self.max_total_tokens = self.args.max_total_tokens or self._profile_kv_tokens(per_token)
        default_reqs = 1024 if self.device.type == "cuda" else 256
        self.max_running_requests = min(self.args.max_running_requests or default_reqs,
                                        self.max_total_tokens)
        self.kv_pool = KVPool(self.max_total_tokens, m.num_layers, m.num_kv_heads, m.head_dim,
                              self.dtype, self.device)
        self.req_pool = ReqToTokenPool(self.max_running_requests, self.context_len + 1, self.device)
        self.allocator = SlotAllocator(self.max_total_tokens)
        logger.info("KV pool: %d tokens (%.1f MiB), %d request rows, context length %d",
                    self.max_total_tokens, self.max_total_tokens * per_token / 2**20,
                    self.max_running_requests, self.context_len)

    def _profile_kv_tokens(self, bytes_per_token: int) -> int:
        if self.device.type == "cuda":
            fraction = self.args.mem_fraction_static or CUDA_DEFAULT_MEM_FRACTION
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * fraction - (total - free)
        else:
            fraction = self.args.mem_fraction_static or CPU_DEFAULT_MEM_FRACTION
            budget = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * fraction
        tokens = int(budget // bytes_per_token)
        if tokens < self.context_len // 4:
            raise RuntimeError(
                f"mem_fraction_static={fraction} leaves room for only {max(tokens, 0)} KV tokens; "
                "raise --mem-fraction-static or set --max-total-tokens")
        return tokens

    def forward(self, batch: ScheduleBatch) -> ForwardOutput:
        ctx, input_ids = self._build_context(batch)
        with torch.inference_mode():
            hidden = self.model(input_ids, ctx.positions, ctx)
            rows, offsets = [], [0]
            for entry, start in zip(batch.entries, ctx.extend_start_loc.tolist()):
                rows.extend(start + r for r in entry.logit_rows)
                offsets.append(len(rows))
            index = torch.tensor(rows, dtype=torch.int64, device=self.device)
            logits = self.model.compute_logits(hidden.index_select(0, index)).float()
        return ForwardOutput(logits=logits, row_offsets=offsets)

    def _build_context(self, batch: ScheduleBatch):
        entries = batch.entries
        extend_lens = [len(e.tokens) for e in entries]
        prefix_lens = [e.start for e in entries]
        input_ids = [t for e in entries for t in e.tokens]
        positions = [p for e in entries for p in range(e.start, e.start + len(e.tokens))]
        starts = [0]
        for n in extend_lens[:-1]:
            starts.append(starts[-1] + n)

        def as_tensor(values):
            return torch.tensor(values, dtype=torch.int64, device=self.device)

        prefix_t, extend_t = as_tensor(prefix_lens), as_tensor(extend_lens)
        ctx = ForwardContext(
            positions=as_tensor(positions),
            out_cache_loc=torch.cat([e.slots for e in entries]).to(self.device),
            req_pool_indices=as_tensor([e.req.req_pool_idx for e in entries]),
            req_to_token=self.req_pool.req_to_token,
            prefix_lens=prefix_t,
            extend_lens=extend_t,
            seq_lens=prefix_t + extend_t,
            extend_start_loc=as_tensor(starts),
            kv_pool=self.kv_pool,
            prefix_lens_cpu=prefix_lens,
            extend_lens_cpu=extend_lens,
            attention_backend=self.args.attention_backend or "torch_native",
        )
        return ctx, as_tensor(input_ids)
