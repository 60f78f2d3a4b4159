"""The flashinfer attention backend (`--attention-backend flashinfer`), for where the
flashinfer package is installed; rollserve never requires it.

The KV pool's per-layer buffers [slots, Hkv, D] are flashinfer's paged cache with
one-token pages ([slots, 1, Hkv, D], NHD layout), so a request's page list is its
row of req_to_token. Each forward lists those slots once (`FlashInferForward`); the
first layer that asks for a given (causal, window, scale) plans a wrapper, and every
other layer reuses that plan. K and V are stored in the pool (and q, k rotated) by the
same Triton kernels as the triton backend. A forward carrying tree masks (speculative tree
drafts) runs the prefill wrapper with each request's dense mask as custom_mask
(attention/tree_mask.py), the window folded into it.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from rollserve.core.forward_context import ForwardContext
from rollserve.executor.attention.base import AttentionBackend
from rollserve.executor.attention.tree_mask import flat_custom_mask
from rollserve.kernels.rotary import RopeInputs

WORKSPACE_BYTES = 256 << 20  # split-KV partial results; flashinfer recommends 128 MB or more
TENSOR_CORE_DECODE_MIN_GROUP = 4  # query heads per KV head from which decode runs on tensor cores


def flashinfer_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("flashinfer") is not None


def kv_indptr(seq_lens: List[int]) -> torch.Tensor:
    """[B + 1] int32 (host): where each request's slots start in the flattened slot list."""
    indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    torch.cumsum(torch.tensor(seq_lens, dtype=torch.int32), 0, out=indptr[1:])
    return indptr


def kv_indices(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
               total: int) -> torch.Tensor:
    """The pool slots of every request's sequence back to back, [total] int32, on the device.

    `total` (the sum of seq_lens, known on the host) sizes the result, so nothing syncs."""
    device = seq_lens.device
    owner = torch.repeat_interleave(torch.arange(seq_lens.shape[0], device=device), seq_lens,
                                    output_size=total)
    first = torch.cumsum(seq_lens, 0) - seq_lens
    column = torch.arange(total, device=device) - first[owner]
    return req_to_token[req_pool_indices[owner], column].to(torch.int32)


def window_left(sliding_window: Optional[int]) -> int:
    """flashinfer's inclusive left window: a token sees itself and the window - 1 before it."""
    return -1 if sliding_window is None else sliding_window - 1


class FlashInferBackend(AttentionBackend):
    """What lives as long as the model runner: the workspace, the wrappers and their plan events."""

    name = "flashinfer"
    supports_cuda_graph = True
    plans_per_replay = True
    supports_tree_mask = True  # through custom_mask (FlashInferForward.plan)

    def __init__(self, device: torch.device, num_kv_heads: int):
        super().__init__(device, num_kv_heads)
        device = self.device
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.wrappers: Dict[tuple, object] = {}
        self.plan_copied: Dict[int, torch.cuda.Event] = {}
        self._graph_indices: Optional[torch.Tensor] = None

    def wrapper(self, decode: bool, tensor_cores: bool, key: tuple, graph_buffers: Optional[dict] = None):
        """The eager wrapper of this kind and key (one, reused by every forward); with
        graph_buffers, a new CUDA-graph wrapper over those fixed buffers."""
        import flashinfer

        if graph_buffers is not None:
            return flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=tensor_cores,
                backend="fa2", **graph_buffers)
        full_key = (decode, tensor_cores) + key
        if full_key not in self.wrappers:
            if decode:
                self.wrappers[full_key] = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                    self.workspace, "NHD", use_tensor_cores=tensor_cores, backend="fa2")
            else:
                self.wrappers[full_key] = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
                    self.workspace, "NHD", backend="fa2")
        return self.wrappers[full_key]

    def plan(self, wrapper, *args, **kwargs) -> None:
        """wrapper.plan(...), once the copy of its previous plan has run on the GPU.

        A plan fills the wrapper's pinned host buffer and queues its copy to the device
        without waiting; with overlap scheduling the next plan could overwrite that buffer
        before the GPU reached the copy."""
        copied = self.plan_copied.setdefault(id(wrapper), torch.cuda.Event())
        copied.synchronize()
        wrapper.plan(*args, **kwargs)
        copied.record()

    def graph_indices(self, max_slots: int) -> torch.Tensor:
        """One slot-list buffer for every captured size: one graph runs at a time, and each
        replay's plan copies its list in stream order."""
        if self._graph_indices is None or self._graph_indices.numel() < max_slots:
            self._graph_indices = torch.zeros(max_slots, dtype=torch.int32, device=self.device)
        return self._graph_indices

    def prepare_metadata(self, ctx: ForwardContext) -> "FlashInferForward":
        return FlashInferForward(self, ctx)

    def capture_metadata(self, batch_size: int, max_slots: int) -> "FlashInferGraphDecode":
        return FlashInferGraphDecode(self, batch_size, max_slots)

    def prepare_for_replay(self, ctx: ForwardContext, seq_lens: List[int]) -> None:
        ctx.attn_metadata.before_replay(ctx, seq_lens)

    def forward(self, q, k, v, ctx, layer_id, scaling, sliding_window=None, causal=True, rope=None):
        return attention_flashinfer(q, k, v, ctx, layer_id, scaling, sliding_window, causal, rope)


class FlashInferForward:
    """One forward's slot lists and plans (ctx.attn_metadata of the flashinfer backend)."""

    def __init__(self, backend: FlashInferBackend, ctx: ForwardContext):
        self.backend = backend
        has_tree = ctx.tree_masks is not None and any(m is not None for m in ctx.tree_masks)
        self.tree_ctx = ctx if has_tree else None  # the decode wrapper takes no mask
        self.is_decode = ctx.is_decode and not has_tree
        self.qo_indptr = kv_indptr(ctx.extend_lens_cpu)
        self.planned: Dict[tuple, tuple] = {}  # key -> (wrapper, its plan's arguments past the slots)
        self.set_slots(ctx, [p + n for p, n in zip(ctx.prefix_lens_cpu, ctx.extend_lens_cpu)])

    def set_slots(self, ctx: ForwardContext, seq_lens: List[int]) -> None:
        self.kv_indptr = kv_indptr(seq_lens)
        self.last_page_len = torch.ones(len(seq_lens), dtype=torch.int32)
        self.kv_indices = kv_indices(ctx.req_to_token, ctx.req_pool_indices, ctx.seq_lens,
                                     sum(seq_lens))

    def new_wrapper(self, tensor_cores: bool, key: tuple):
        return self.backend.wrapper(self.is_decode, tensor_cores, key)

    def plan(self, q: torch.Tensor, k_cache: torch.Tensor, scaling: float,
             sliding_window: Optional[int], causal: bool):
        """The wrapper planned for this forward and these settings (planned on first use)."""
        num_qo_heads, (num_kv_heads, head_dim) = q.shape[1], k_cache.shape[1:]
        key = (causal, sliding_window, scaling, num_qo_heads, num_kv_heads, head_dim)
        if key not in self.planned:
            tensor_cores = num_qo_heads // num_kv_heads >= TENSOR_CORE_DECODE_MIN_GROUP
            shape = (num_qo_heads, num_kv_heads, head_dim, 1)
            kwargs = dict(sm_scale=scaling, window_left=window_left(sliding_window),
                          q_data_type=q.dtype, kv_data_type=k_cache.dtype)
            if not self.is_decode:  # one new token sees its whole sequence, causal or not
                kwargs["causal"] = causal
            if self.tree_ctx is not None and causal:  # non-causal ignores trees, as the reference
                kwargs.update(causal=False, window_left=-1,
                              custom_mask=flat_custom_mask(self.tree_ctx, sliding_window))
            self.planned[key] = (self.new_wrapper(tensor_cores, key), shape, kwargs)
            self.replan(key)
        return self.planned[key][0]

    def replan(self, key: tuple) -> None:
        wrapper, shape, kwargs = self.planned[key]
        slots = (self.kv_indptr, self.kv_indices, self.last_page_len)
        if not self.is_decode:
            slots = (self.qo_indptr,) + slots
        self.backend.plan(wrapper, *slots, *shape, **kwargs)


class FlashInferGraphDecode(FlashInferForward):
    """ctx.attn_metadata of one captured decode batch size: wrappers over fixed device
    buffers, planned again (slot lists of the new batch) before each replay."""

    def __init__(self, backend: FlashInferBackend, batch_size: int, max_slots: int):
        self.backend = backend
        self.is_decode = True
        self.tree_ctx = None  # tree forwards run eager
        self.planned = {}
        device = backend.device
        self.buffers = dict(
            paged_kv_indptr_buffer=torch.zeros(batch_size + 1, dtype=torch.int32, device=device),
            paged_kv_indices_buffer=backend.graph_indices(max_slots),
            paged_kv_last_page_len_buffer=torch.ones(batch_size, dtype=torch.int32, device=device))

    def new_wrapper(self, tensor_cores: bool, key: tuple):
        return self.backend.wrapper(True, tensor_cores, key, graph_buffers=self.buffers)

    def before_replay(self, ctx: ForwardContext, seq_lens: List[int]) -> None:
        """Plans every wrapper of the graph for the batch now in ctx's input buffers."""
        self.set_slots(ctx, seq_lens)
        for key in self.planned:
            self.replan(key)


def paged_view(k_cache: torch.Tensor, v_cache: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The pool's [slots, Hkv, D] buffers as flashinfer's NHD pages of one token."""
    return k_cache.unsqueeze(1), v_cache.unsqueeze(1)


def attention_flashinfer(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                         layer_id: int, scaling: float, sliding_window: Optional[int] = None,
                         causal: bool = True, rope: Optional[RopeInputs] = None) -> torch.Tensor:
    """Stores k, v (rotating q, k with `rope`) and returns the attention of q, [T, Hq, D]."""
    from rollserve.executor.attention.triton import store_kv_triton

    if not causal and sliding_window is not None:
        raise ValueError("a sliding window needs causal attention")
    q = store_kv_triton(q, k, v, ctx, layer_id, rope)
    k_cache, v_cache = ctx.kv_pool.kv(layer_id)
    wrapper = ctx.attn_metadata.plan(q, k_cache, scaling, sliding_window, causal)
    return wrapper.run(q.contiguous(), paged_view(k_cache, v_cache))
