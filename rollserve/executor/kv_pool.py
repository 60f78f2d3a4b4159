"""The KV cache: one preallocated pool of token slots, and the request-to-slot table.

Page size is 1 token (as SGLang's default): a slot holds the K and V of one token
for every layer. Token granularity lets the radix cache share any prefix length
exactly, and keeps allocation a slice of a free list. Slot 0 is never handed out:
it is the padding slot that padded batch entries (CUDA graphs) may write into.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch


class KVPool:
    """Per-layer K and V buffers of shape [num_slots + 1, num_kv_heads, head_dim]."""

    def __init__(self, num_slots: int, num_layers: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str | torch.device, v_head_dim: Optional[int] = None):
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        v_dim = v_head_dim or head_dim
        self.k_buffers: List[torch.Tensor] = [
            torch.zeros(num_slots + 1, num_kv_heads, head_dim, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]
        self.v_buffers: List[torch.Tensor] = [
            torch.zeros(num_slots + 1, num_kv_heads, v_dim, dtype=dtype, device=device)
            for _ in range(num_layers)
        ]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def store(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffers[layer_id][loc] = k.to(self.dtype)
        self.v_buffers[layer_id][loc] = v.to(self.dtype)

    def kv(self, layer_id: int):
        return self.k_buffers[layer_id], self.v_buffers[layer_id]


class SlotAllocator:
    """Free list of KV slots 1..num_slots. Slots travel as int64 CPU tensors."""

    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.clear()

    def clear(self) -> None:
        self.free_slots = torch.arange(1, self.num_slots + 1, dtype=torch.int64)

    def available(self) -> int:
        return int(self.free_slots.numel())

    def alloc(self, n: int) -> Optional[torch.Tensor]:
        if n > self.free_slots.numel():
            return None
        out, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.free_slots = torch.cat([self.free_slots, slots.to(torch.int64).cpu()])


class ReqToTokenPool:
    """Row r lists, position by position, the KV slots of the request holding row r.

    On a GPU the scheduler reads and writes a host copy (`host`), and the writes reach
    the device table in one batched copy at `flush()`, which the model runner calls
    before each forward: the scheduler's bookkeeping never waits for the GPU.
    """

    def __init__(self, max_requests: int, max_context_len: int, device: str | torch.device):
        self.req_to_token = torch.zeros(max_requests, max_context_len, dtype=torch.int32, device=device)
        on_host = self.req_to_token.device.type == "cpu"
        self.host = self.req_to_token if on_host else torch.zeros_like(self.req_to_token, device="cpu")
        self._pending: List[Tuple[np.ndarray, np.ndarray]] = []  # (rows, cols) written on the host only
        self.free_rows = list(range(max_requests))
        self.max_requests = max_requests

    def available(self) -> int:
        return len(self.free_rows)

    def alloc(self) -> Optional[int]:
        return self.free_rows.pop() if self.free_rows else None

    def free(self, row: int) -> None:
        self.free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.host[row, start:start + slots.numel()] = slots.to(dtype=torch.int32, device="cpu")
        if self.host is not self.req_to_token and slots.numel():
            self._pending.append((np.full(slots.numel(), row, dtype=np.int64),
                                  np.arange(start, start + slots.numel(), dtype=np.int64)))

    def write_each(self, rows: List[int], positions: List[int], slots: torch.Tensor) -> None:
        """One slot per request: row rows[i] gets slots[i] at positions[i] (a decode step)."""
        rows_np, cols_np = np.asarray(rows, dtype=np.int64), np.asarray(positions, dtype=np.int64)
        self.host.numpy()[rows_np, cols_np] = slots.numpy()
        if self.host is not self.req_to_token:
            self._pending.append((rows_np, cols_np))

    def slots(self, row: int, length: int) -> torch.Tensor:
        """The row's first `length` slots, int64 on the CPU."""
        return self.host[row, :length].to(torch.int64)

    def flush(self) -> None:
        """Copies the pending host writes to the device table (one transfer, one scatter)."""
        if not self._pending:
            return
        rows = np.concatenate([r for r, _ in self._pending])
        cols = np.concatenate([c for _, c in self._pending])
        self._pending = []
        host = self.host.numpy()
        packed = torch.from_numpy(np.stack([rows, cols, host[rows, cols].astype(np.int64)]))
        from rollserve.kernels.dispatch import host_to_device

        rows_d, cols_d, values = host_to_device(packed, self.req_to_token.device)
        self.req_to_token[rows_d, cols_d] = values.to(torch.int32)
