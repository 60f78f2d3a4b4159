"""Owns the model and the KV memory; turns a ScheduleBatch into logits.

Builds one ForwardContext per forward (positions, slot mapping, sequence and
prefix lengths) and hands it to the model explicitly.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
from transformers import AutoConfig

from rollserve.kernels import batch_invariant
from rollserve.executor.config import ExecutorConfig
from rollserve.executor.cuda_graph_runner import CudaGraphRunner, graph_sizes
from rollserve.executor.draft_models import load_draft_model
from rollserve.executor.draft_runner import (HiddenCapture, draft_kv_bytes_per_token,
                                             scratch_slots_per_row)
from rollserve.executor.graph_dispatch import build_verify_runner, replay_graphs
from rollserve.executor.verify_graph_runner import VerifyGraphRunner
from rollserve.executor.kv_budget import kv_pool_tokens
from rollserve.executor.pooling_model import load_pooling_model, pooling_spec
from rollserve.executor.forward_batch import build_context, host_batch
from rollserve.executor.kv_pool import KVPool, ReqToTokenPool, SlotAllocator
from rollserve.executor.mla_kv_pool import MLAKVPool
from rollserve.executor.routed_experts import RoutedExpertsStore
from rollserve.executor.expert_distribution import ExpertDistributionRecorder, moe_summary
from rollserve.executor.model_loader import load_model, resolve_dtype
from rollserve.executor.layers.moe import idle_exchanges
from rollserve.executor.parallel_state import all_gather_counts, dp_attention
from rollserve.executor.layers.rotary import RotaryEmbedding
from rollserve.core.batch import ScheduleBatch
from rollserve.executor.attention.registry import create_attention_backend, select_attention_backend
from rollserve.kernels.dispatch import host_to_device
from rollserve.executor.memory_saver import MemorySaver
from rollserve.executor.multimodal import MultimodalRunner

logger = logging.getLogger(__name__)

CPU_DEFAULT_MEM_FRACTION = 0.1
CUDA_DEFAULT_MEM_FRACTION = 0.85


@dataclass
class ForwardOutput:
    logits: Optional[torch.Tensor]  # [sum of len(entry.logit_rows)] x vocab, float32
    row_offsets: List[int]  # entry i's logits are logits[row_offsets[i] : row_offsets[i+1]]
    hidden: Optional[torch.Tensor] = None  # pooling models: those rows' hidden states, not logits
    spec_hidden: Optional[torch.Tensor] = None  # every token's, for a draft model (draft_runner.py)


class ModelRunner:
    def __init__(self, config: ExecutorConfig):
        self.config = config
        self.device = torch.device(config.device)
        self.hf_config = AutoConfig.from_pretrained(config.model_path, trust_remote_code=config.trust_remote_code)
        self.dtype = resolve_dtype(self.hf_config, config.dtype, self.device.type)
        self.context_len = config.context_length or getattr(self.hf_config, "max_position_embeddings", 4096)
        logger.info("loading weights from %s (%s, %s)", config.model_path, self.dtype, self.device)
        self.pooling = pooling_spec(config.model_path, config.is_embedding, self.hf_config)  # None: generation
        load = load_model if self.pooling is None else load_pooling_model
        self.memory_saver = MemorySaver(config.enable_memory_saver, self.device)
        with self.memory_saver.region("weights"):  # release_memory_occupation's tags
            self.model = load(config.model_path, self.dtype, str(self.device), config.load_format)
        self.vocab_size = self.model.vocab_size
        for module in self.model.modules():  # rope tables cover every position the pool can hold
            if isinstance(module, RotaryEmbedding):
                module.cache_positions(self.context_len + 1)
        # MLA models cache one latent per token unless --disable-mla (then expanded K/V)
        self.mla_dims = None if config.disable_mla else getattr(self.model, "mla_dims", None)
        # a draft model (executor/draft_runner.py) loads first: the pool is sized around it
        self.draft_model = None if config.draft is None or self.pooling is not None else \
            load_draft_model(config.draft.algorithm, config.draft.path, self.model, self.dtype,
                             self.device)
        self._init_memory()
        self.attention_backend = select_attention_backend(
            config.attention_backend, self.device, mla=self.mla_dims is not None,
            deterministic=config.enable_deterministic_inference)
        if config.enable_deterministic_inference:
            batch_invariant.enable()  # every linear of this process, from now on
        self.attn_backend = create_attention_backend(self.attention_backend, self.device,
                                                     self.kv_pool.num_kv_heads)
        self.expert_recorder = ExpertDistributionRecorder.for_model(self.model, self.device)  # MoE only
        # --enable-return-routed-experts: every token's expert ids, one row per KV slot (+ padding)
        self.routed_experts = (RoutedExpertsStore.for_model(self.model, self.max_total_tokens + 1,
                                                            self.device)
                               if config.enable_return_routed_experts else None)
        self.model_summary = moe_summary(self.model, self.mla_dims is not None)
        # latest sampled token per request row, read by decode inputs that name it (forward_batch.py)
        self.num_forwards = 0
        self.draft_lockstep = None  # DP attention with an MoE draft (executor/draft_lockstep.py)
        self.future_tokens = torch.zeros(self.max_running_requests, dtype=torch.int64, device=self.device)
        # VLMs: encodes images in the prefill batch, caches their features (executor/multimodal.py)
        self.multimodal = MultimodalRunner.for_model(self.model, self.device, self.max_running_requests,
                                                     split_encoder=config.mm_enable_dp_encoder)
        self.graph_runner: Optional[CudaGraphRunner] = None  # decode CUDA graphs; None on CPU or when disabled
        # a draft model's HiddenCapture (executor/draft_runner.py): the graphs return its states too
        self.hidden_capture = (HiddenCapture(self.draft_model.aux_layers)
                               if self.draft_model is not None else None)
        # chain verify graphs (executor/verify_graph_runner.py): rows per request, 0 for none
        self.verify_rows = 0
        self.verify_graph_runner: Optional[VerifyGraphRunner] = None
        self.graphs_eager = False  # tests: the graph runners' eager mode on CPU
        self.capture_cuda_graphs()

    def capture_cuda_graphs(self, eager: Optional[bool] = None) -> None:
        """(Re)captures the decode (and verify) graphs where they can and should be used (after
        start-up, a memory resume that moved the weights or the KV pool, a draft model's
        arrival). eager=True builds the graph runners in their eager mode, on any device."""
        self.graphs_eager = self.graphs_eager if eager is None else eager
        self.graph_runner = self.verify_graph_runner = None
        config = self.config
        if (self.device.type != "cuda" and not self.graphs_eager) or config.disable_cuda_graph:
            return
        if (not self.attn_backend.supports_cuda_graph and not self.graphs_eager) or \
                self.pooling is not None:
            logger.info("CUDA graphs need a backend that supports them and a generation model; "
                        "not captured")
            return
        sizes = graph_sizes(config, self.max_running_requests)
        if sizes:
            compile_max_bs = config.torch_compile_max_bs if config.enable_torch_compile else 0
            self.graph_runner = CudaGraphRunner(self.model, self.kv_pool, self.req_pool.req_to_token,
                                                self.future_tokens, self.attn_backend, sizes,
                                                compile_max_bs, self.routed_experts,
                                                self.hidden_capture, self.graphs_eager or None)
        self.verify_graph_runner = build_verify_runner(self)

    def enable_verify_graphs(self, num_rows: int) -> None:
        """Speculative chains of num_rows rows per request (scheduler/speculative.py): capture
        their verify forwards too."""
        self.verify_rows = num_rows
        self.verify_graph_runner = build_verify_runner(self)

    def idle_forward(self) -> None:
        """DP attention: a rank with nothing to run this step still takes part in every MoE
        block's exchange (with no tokens), so the ranks that do run are not left waiting.
        Counted in num_forwards: the step took part in one."""
        self.num_forwards += 1
        if self.draft_lockstep is not None:  # DP attention: a draft's MoE forwards pair up
            self.draft_lockstep.target_forward()
        idle_exchanges(self.model, all_gather_counts(0), self.dtype, self.device)  # one count, as a forward

    def drop_cuda_graphs(self) -> None:
        self.graph_runner = self.verify_graph_runner = None

    def _init_memory(self) -> None:
        m = self.model
        mla = self.mla_dims
        per_token = (MLAKVPool.latent_bytes_per_token(m.num_layers, mla.latent_dim, self.dtype) if mla
                     else KVPool.bytes_per_token(m.num_layers, m.num_kv_heads, m.head_dim, self.dtype))
        if self.config.enable_return_routed_experts:  # a row of expert ids per slot, beside the KV
            per_token += RoutedExpertsStore.bytes_per_token(m)
        default_reqs = 1024 if self.device.type == "cuda" else 256
        most_reqs = self.config.max_running_requests or default_reqs
        draft_per_token = draft_scratch = 0  # the draft's pool shares the budget (kv_budget.py)
        if self.draft_model is not None:
            draft_per_token = draft_kv_bytes_per_token(self.draft_model, mla, self.dtype)
            spec = self.config.draft
            draft_scratch = most_reqs * scratch_slots_per_row(spec.num_drafts, spec.topk, spec.num_steps)
        self.max_total_tokens = self.config.max_total_tokens or self._profile_kv_tokens(
            per_token, draft_per_token, draft_scratch)
        self.max_running_requests = min(most_reqs, self.max_total_tokens)
        with self.memory_saver.region("kv_cache"):
            self.kv_pool = (MLAKVPool(self.max_total_tokens, m.num_layers, mla.kv_lora_rank,
                                      mla.qk_rope_head_dim, self.dtype, self.device) if mla else
                            KVPool(self.max_total_tokens, m.num_layers, m.num_kv_heads, m.head_dim,
                                   self.dtype, self.device))
        self.req_pool = ReqToTokenPool(self.max_running_requests, self.context_len + 1, self.device)
        self.allocator = SlotAllocator(self.max_total_tokens)
        logger.info("KV pool: %d tokens (%.1f MiB; draft KV %.1f MiB), %d request rows, context "
                    "length %d", self.max_total_tokens, self.max_total_tokens * per_token / 2**20,
                    (self.max_total_tokens + draft_scratch) * draft_per_token / 2**20,
                    self.max_running_requests, self.context_len)

    def memory_usage(self) -> dict:
        """GiB held by the weights and the KV pool, and the pool's size in tokens (the
        `memory_usage` SGLang reports in /get_server_info's internal_states)."""
        kv = sum(t.numel() * t.element_size() for t in self.kv_pool.k_buffers + self.kv_pool.v_buffers)
        return {"weight": round(self._weight_bytes() / 2**30, 3), "kvcache": round(kv / 2**30, 3),
                "token_capacity": int(self.max_total_tokens)}

    def _weight_bytes(self) -> int:
        """The target's weights and a draft model's own (not the target tensors it reads)."""
        models = [self.model] + ([self.draft_model] if self.draft_model is not None else [])
        return sum(p.numel() * p.element_size() for m in models for p in m.parameters())

    def _profile_kv_tokens(self, bytes_per_token: int, draft_bytes_per_token: int = 0,
                           draft_scratch_slots: int = 0) -> int:
        if self.device.type == "cuda":
            fraction = self.config.mem_fraction_static or CUDA_DEFAULT_MEM_FRACTION
            free, total = torch.cuda.mem_get_info(self.device)
            budget = total * fraction - (total - free)
        else:
            fraction = self.config.mem_fraction_static or CPU_DEFAULT_MEM_FRACTION
            budget = self._cpu_kv_budget(fraction)
        tokens = kv_pool_tokens(budget, bytes_per_token, draft_bytes_per_token, draft_scratch_slots)
        if tokens < self.context_len // 4:
            raise RuntimeError(
                f"mem_fraction_static={fraction} leaves room for only {max(tokens, 0)} KV tokens; "
                "raise --mem-fraction-static or set --max-total-tokens")
        return tokens

    def _cpu_kv_budget(self, fraction: float) -> float:
        """Bytes for the KV pool on CPU: a share of the machine's total memory less the
        weights. Not of the free memory: on a host shared with a trainer or other servers
        that would size the pool by whatever happened to be free at start."""
        page = os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * page
        weights = self._weight_bytes()  # a draft model's included
        budget = max(total - weights, 0) * fraction
        free = os.sysconf("SC_AVPHYS_PAGES") * page
        logger.info("KV pool on CPU: %.2f x (total memory %.1f GiB - weights %.2f GiB) = %.2f GiB "
                    "(%.1f GiB free now; --max-total-tokens sets the size instead)", fraction,
                    total / 2**30, weights / 2**30, budget / 2**30, free / 2**30)
        if budget > free:
            logger.warning("the KV pool (%.2f GiB) is larger than the free memory (%.2f GiB); "
                           "the host may swap", budget / 2**30, free / 2**30)
        return budget

    def forward(self, batch: ScheduleBatch) -> ForwardOutput:
        self.num_forwards += 1  # DP attention: whether a step ran one (scheduler/dp_attention.py)
        if self.draft_lockstep is not None:  # DP attention: a draft's MoE forwards pair up
            self.draft_lockstep.target_forward()
        self.req_pool.flush()  # the scheduler's slot-table writes since the last forward
        host = host_batch(batch)
        mm = self.multimodal.prepare(batch) if self.multimodal is not None else None
        recorder = self.expert_recorder
        recorder = recorder if recorder is not None and recorder.recording else None
        # the graphs hold no distribution recorder and no image features: eager then
        graphed = replay_graphs(self, host, batch) if recorder is None and mm is None else None
        if graphed is not None:
            logits, spec_hidden, offsets = graphed
            return ForwardOutput(logits=logits, row_offsets=offsets, spec_hidden=spec_hidden)
        ctx, input_ids = build_context(host, self.device, self.future_tokens, self.req_pool.req_to_token,
                                       self.kv_pool, self.attn_backend)
        # the graphs hold no distribution recorder: eager while recording
        ctx.moe_recorder = (self.routed_experts.bind(ctx.out_cache_loc, forward_to=recorder)
                            if self.routed_experts is not None else recorder)
        ctx.mm = mm
        if dp_attention():  # the MoE blocks' exchanges need every rank's count: taken once
            ctx.dp_token_counts = all_gather_counts(int(input_ids.shape[0]))
        capture = self.hidden_capture
        if capture is not None:
            capture.begin(ctx)
        with torch.inference_mode():
            hidden = self.model(input_ids, ctx.positions, ctx)
            rows, offsets = [], [0]
            for entry, start in zip(batch.entries, host.starts):
                rows.extend(start + r for r in entry.logit_rows)
                offsets.append(len(rows))
            index = host_to_device(torch.tensor(rows, dtype=torch.int64), self.device)
            if self.pooling is not None:
                return ForwardOutput(None, offsets, hidden=hidden.index_select(0, index))
            logits = self.model.compute_logits(hidden.index_select(0, index)).float()
        return ForwardOutput(logits=logits, row_offsets=offsets,
                             spec_hidden=capture.collect(ctx, hidden) if capture else None)
