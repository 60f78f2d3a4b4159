"""The KV pool of MLA models: one compressed latent per token and layer, [kv_lora_rank | rope
dims] (576 values for DeepSeek-V3 instead of 128 heads x (192 + 128)).

It keeps KVPool's buffer lists (k_buffers holds the latents as [slots + 1, 1, latent_dim],
v_buffers is empty), so memory release / resume treats both pools alike.
"""

from __future__ import annotations

import torch

from rollserve.executor.kv_pool import KVPool


class MLAKVPool(KVPool):
    def __init__(self, num_slots: int, num_layers: int, kv_lora_rank: int, rope_dim: int,
                 dtype: torch.dtype, device: str | torch.device):
        self.num_slots = num_slots
        self.num_layers = num_layers
        self.num_kv_heads = 1
        self.kv_lora_rank = kv_lora_rank
        self.head_dim = kv_lora_rank + rope_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.k_buffers = [torch.zeros(num_slots + 1, 1, self.head_dim, dtype=dtype, device=device)
                          for _ in range(num_layers)]
        self.v_buffers = []

    @staticmethod
    def latent_bytes_per_token(num_layers: int, latent_dim: int, dtype: torch.dtype) -> int:
        return num_layers * latent_dim * torch.empty((), dtype=dtype).element_size()

    def store_latent(self, layer_id: int, loc: torch.Tensor, latent: torch.Tensor) -> None:
        """latent [T, kv_lora_rank + rope_dim] (the normed latent, then the rotated k_pe)."""
        self.k_buffers[layer_id][loc] = latent.to(self.dtype)[:, None, :]

    def latent(self, layer_id: int) -> torch.Tensor:
        return self.k_buffers[layer_id][:, 0, :]

    def store(self, layer_id, loc, k, v) -> None:
        raise TypeError("the MLA pool stores latents (store_latent), not per-head K/V")

    def kv(self, layer_id: int):
        """The latent as a single K head, its first kv_lora_rank values as the V head."""
        buffer = self.k_buffers[layer_id]
        return buffer, buffer[..., :self.kv_lora_rank]
