"""Applying a grammar's token bitmask to logits: disallowed tokens get -inf.

The bitmask is xgrammar's layout: int32 [N, ceil(V / 32)], bit j of word w set when token
32 * w + j may come next; bitmask row i belongs to logits row i. `apply_token_bitmask`
changes the chosen rows of the logits in place, on the device they live on, without a host
sync (a CUDA decode step is not stalled): on CPU through xgrammar's native kernel, elsewhere
through the torch reference below (a few elementwise ops over [rows, V]; xgrammar's own CUDA
kernel is compiled at first use, which a serving process should not depend on).
Logit columns past the bitmask's 32 * W (lm_head padding beyond the tokenizer) are masked too.
"""

from __future__ import annotations

from typing import Dict, Sequence

import torch

from rollserve.kernels.dispatch import host_to_device

_SHIFTS: Dict[torch.device, torch.Tensor] = {}  # the bit positions of one word, per device


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS:
        _SHIFTS[device] = torch.arange(32, dtype=torch.int32, device=device)
    return _SHIFTS[device]


def allowed_tokens(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """int32 [N, W] -> bool [N, vocab], True where the token is allowed."""
    bits = (bitmask.unsqueeze(-1) >> _shifts(bitmask.device)) & 1
    allowed = bits.to(torch.bool).reshape(bitmask.shape[0], -1)
    if allowed.shape[1] >= vocab:
        return allowed[:, :vocab]
    pad = torch.zeros(bitmask.shape[0], vocab - allowed.shape[1], dtype=torch.bool,
                      device=bitmask.device)
    return torch.cat([allowed, pad], dim=1)


def apply_token_bitmask_torch(logits: torch.Tensor, bitmask: torch.Tensor,
                              rows: Sequence[int]) -> None:
    """The reference: for each i in rows, logits[i, t] = -inf where bitmask[i] clears t."""
    index = host_to_device(torch.tensor(list(rows), dtype=torch.int64), logits.device)
    words = host_to_device(bitmask[list(rows)], logits.device)
    allowed = allowed_tokens(words, logits.shape[-1])
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor, rows: Sequence[int]) -> None:
    """logits [N, V] in place, bitmask [N, W] int32 on the host; only `rows` are masked."""
    rows = list(rows)
    if not rows:
        return
    native = logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous()
    if not native:
        apply_token_bitmask_torch(logits, bitmask, rows)
        return
    import xgrammar

    covered = min(bitmask.shape[1] * 32, logits.shape[-1])
    if covered < logits.shape[-1]:
        logits[torch.tensor(rows, dtype=torch.int64), covered:] = float("-inf")
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, vocab_size=covered, indices=rows,
                                         backend="cpu")
