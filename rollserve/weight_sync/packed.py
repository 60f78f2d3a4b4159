"""vLLM's packed weight-transfer layout (what TRL's VLLMClient broadcasts), both halves.

A push is a stream of (name, tensor) in an order both sides know from the metadata
(`names`, `dtype_names`, `shapes`). Tensors are flattened to bytes and concatenated
with no padding; a chunk is closed right after the tensor that takes it past
`buffer_size_bytes` (so a chunk may exceed the budget by its last tensor), and each
chunk is one broadcast. The receiver cuts the same chunks from the metadata alone.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rollserve.weight_sync.distributed import post_broadcast, wait_all

DEFAULT_BUFFER_SIZE_BYTES = 1024 * 1024 * 1024  # vLLM's default: both sides must agree


def tensor_nbytes(dtype: torch.dtype, shape: Sequence[int]) -> int:
    return math.prod(int(n) for n in shape) * torch.empty((), dtype=dtype).element_size()


def chunk_plan(dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]],
               buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES) -> List[List[int]]:
    """Indices of the tensors in each chunk, cut by the sender's rule."""
    chunks, current, total = [], [], 0
    for i, (dtype, shape) in enumerate(zip(dtypes, shapes)):
        current.append(i)
        total += tensor_nbytes(dtype, shape)
        if total > buffer_size_bytes:
            chunks.append(current)
            current, total = [], 0
    if current:
        chunks.append(current)
    return chunks


def unpack(buffer: torch.Tensor, names, dtypes, shapes) -> List[Tuple[str, torch.Tensor]]:
    """Views of one received uint8 chunk as its named tensors."""
    out, start = [], 0
    for name, dtype, shape in zip(names, dtypes, shapes):
        size = tensor_nbytes(dtype, shape)
        out.append((name, buffer[start:start + size].view(dtype).view(tuple(shape))))
        start += size
    return out


def receive_packed(group, names: Sequence[str], dtypes: Sequence[torch.dtype],
                   shapes: Sequence[Sequence[int]], device: torch.device, src: int = 0,
                   buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES,
                   timeout_s: Optional[float] = None) -> List[Tuple[str, torch.Tensor]]:
    """The engine's half: one broadcast per chunk into fresh buffers. timeout_s: for the
    whole push (distributed.wait_all)."""
    out, chunks = [], chunk_plan(dtypes, shapes, buffer_size_bytes)
    buffers = [torch.empty(sum(tensor_nbytes(dtypes[i], shapes[i]) for i in chunk),
                           dtype=torch.uint8, device=device) for chunk in chunks]
    wait_all([post_broadcast(b, group, src) for b in buffers], timeout_s)
    for chunk, buffer in zip(chunks, buffers):
        out.extend(unpack(buffer, [names[i] for i in chunk], [dtypes[i] for i in chunk],
                          [shapes[i] for i in chunk]))
    return out


def packed_broadcast_producer(iterator: Iterable[Tuple[str, torch.Tensor]], group, src: int,
                              post_iter_func: Callable[[Tuple[str, torch.Tensor]], torch.Tensor],
                              buffer_size_bytes: int = DEFAULT_BUFFER_SIZE_BYTES) -> None:
    """The trainer's half, with vLLM's `packed_nccl_broadcast_producer` signature; `group`
    is a TrainerEndpoint (weight_sync.trl_trainer) or a torch process group."""
    process_group = getattr(group, "process_group", group)
    items: Iterator = iter(iterator)
    while True:
        pieces, total = [], 0
        for item in items:
            flat = post_iter_func(item).detach().contiguous().view(torch.uint8).view(-1)
            pieces.append(flat)
            total += flat.numel()
            if total > buffer_size_bytes:
                break
        if not pieces:
            return
        dist.broadcast(torch.cat(pieces), group=process_group, group_src=src)
