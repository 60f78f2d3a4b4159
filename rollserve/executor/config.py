"""What the executor (model runner, KV pool, CUDA graphs) is built from: the fields it reads
and nothing else, frozen once the server has resolved them (frontend/server_args.py makes it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class DraftSpec:
    """A speculative draft model (EAGLE, EAGLE3, NEXTN) the runner loads beside the target, so
    the KV pool is sized with its weights and KV inside the same budget (executor/kv_budget.py)."""
    algorithm: str
    path: Optional[str]  # EAGLE / EAGLE3 head folder; None for NEXTN (the target's checkpoint)
    num_drafts: int  # drafts per request and step
    topk: int = 1  # > 1: tree drafts (their frontier takes more scratch slots)
    num_steps: Optional[int] = None  # a tree's depth


@dataclass(frozen=True)
class ExecutorConfig:
    model_path: str
    device: str = "cpu"  # resolved: "cuda" or "cpu", never None
    dtype: str = "auto"
    load_format: str = "auto"
    trust_remote_code: bool = False
    is_embedding: bool = False  # a pooling (embedding / reward) model: no sampling, no graphs
    context_length: Optional[int] = None  # None: the config's max_position_embeddings
    # memory
    mem_fraction_static: Optional[float] = None
    max_total_tokens: Optional[int] = None
    max_running_requests: Optional[int] = None
    enable_memory_saver: bool = False
    # GPU path
    attention_backend: Optional[str] = None  # None: triton on CUDA, torch_native on CPU
    disable_mla: bool = False  # MLA models: expanded per-head K/V instead of the latent cache
    enable_return_routed_experts: bool = False  # MoE: keep every token's expert ids (per KV slot)
    # batch-invariant kernels and attention (kernels/batch_invariant.py); no CUDA graphs
    enable_deterministic_inference: bool = False
    cuda_graph_max_bs: Optional[int] = None
    cuda_graph_bs: Optional[Tuple[int, ...]] = None
    disable_cuda_graph: bool = False
    enable_torch_compile: bool = False
    torch_compile_max_bs: int = 32
    # tensor parallel: one scheduler process per rank, tp_size / nnodes of them on each node
    tp_size: int = 1
    ep_size: int = 1  # MoE: 1, or tp_size (whole experts per rank; layers/moe_parallel.py)
    dp_attention: bool = False  # attention whole per rank, own requests; experts split
    moe_a2a: bool = False  # DP attention + whole experts: all-to-all token dispatch
    mm_enable_dp_encoder: bool = False  # VLMs under TP: the ranks split the images to encode
    nnodes: int = 1
    base_gpu_id: int = 0  # rank r of a node uses cuda:(base_gpu_id + r % ranks per node)
    dist_init_addr: Optional[str] = None  # host:port of the TP group's rendezvous (rank 0's)
    dist_timeout: Optional[int] = None  # seconds a collective may wait (None: torch's default)
    draft: Optional[DraftSpec] = None  # --speculative-algorithm EAGLE / EAGLE3 / NEXTN
