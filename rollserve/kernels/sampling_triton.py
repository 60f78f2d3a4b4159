"""Top-k / top-p / min-p sampling in one kernel per row, without sorting.

For each row: softmax statistics (one pass); the k-th largest probability found by
bisection over the float bit patterns (positive floats order like their bits, so
32 halvings pin it exactly); the top-p cut likewise, as the smallest probability
whose strictly-larger survivors hold less than top_p of the survivors' mass;
min_p against the largest probability; then the exponential race argmax(p / E)
with the caller's Exp(1) noise E. Same decisions as the sort-based reference
(kernels.sampling.filtered_weights) up to float ties, and no host synchronization.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BISECT_STEPS = 32


@triton.jit
def _probs_block(logits_ptr, row_offset, start, vocab, temperature, row_max, row_sum,
                 BLOCK: tl.constexpr):
    cols = start + tl.arange(0, BLOCK)
    mask = cols < vocab
    x = tl.load(logits_ptr + row_offset + cols, mask=mask, other=float("-inf"))
    p = tl.exp(x / temperature - row_max) / row_sum
    return p, p.to(tl.int32, bitcast=True), cols, mask


@triton.jit
def _sample_kernel(logits_ptr, noise_ptr, params_ptr, out_ptr, vocab, stride_logits, stride_noise,
                   BLOCK: tl.constexpr, STEPS: tl.constexpr):
    row = tl.program_id(0)
    row_offset = row.to(tl.int64) * stride_logits
    temperature = tl.load(params_ptr + row * 4)
    top_k = tl.load(params_ptr + row * 4 + 1).to(tl.int32)
    top_p = tl.load(params_ptr + row * 4 + 2)
    min_p = tl.load(params_ptr + row * 4 + 3)
    zero_f = temperature * 0.0
    zero_i = top_k * 0

    row_max = zero_f + float("-inf")
    row_sum = zero_f
    for start in range(0, vocab, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row_offset + cols, mask=cols < vocab, other=float("-inf")) / temperature
        new_max = tl.maximum(row_max, tl.max(x, axis=0))
        row_sum = row_sum * tl.exp(row_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        row_max = new_max
    p_max = 1.0 / row_sum
    p_max_bits = p_max.to(tl.int32, bitcast=True)

    # top_k: the largest bit pattern `lo` with count(bits >= lo) >= top_k
    lo = zero_i
    hi = p_max_bits + 1
    for _ in range(0, tl.where(top_k < vocab, STEPS, 0)):
        mid = lo + (hi - lo) // 2
        count = zero_i
        for start in range(0, vocab, BLOCK):
            p, bits, cols, mask = _probs_block(logits_ptr, row_offset, start, vocab, temperature,
                                               row_max, row_sum, BLOCK)
            count += tl.sum(((bits >= mid) & mask).to(tl.int32), axis=0)
        enough = count >= top_k
        lo = tl.where(enough, mid, lo)
        hi = tl.where(enough, hi, mid)
    k_bits = lo

    # top_p over the top_k survivors, whose mass is 1 when top_k is unset
    kept_mass = zero_f + 1.0
    for _ in range(0, tl.where((top_p < 1.0) & (top_k < vocab), 1, 0)):
        kept_mass = zero_f
        for start in range(0, vocab, BLOCK):
            p, bits, cols, mask = _probs_block(logits_ptr, row_offset, start, vocab, temperature,
                                               row_max, row_sum, BLOCK)
            kept_mass += tl.sum(tl.where(bits >= k_bits, p, 0.0), axis=0)
    target = top_p * kept_mass
    lo = k_bits - 1  # mass above it: all survivors, >= target
    hi = p_max_bits  # mass above it: none, < target
    for _ in range(0, tl.where(top_p < 1.0, STEPS, 0)):
        mid = lo + (hi - lo) // 2
        mass = zero_f
        for start in range(0, vocab, BLOCK):
            p, bits, cols, mask = _probs_block(logits_ptr, row_offset, start, vocab, temperature,
                                               row_max, row_sum, BLOCK)
            mass += tl.sum(tl.where((bits > mid) & (bits >= k_bits), p, 0.0), axis=0)
        heavy = mass >= target
        lo = tl.where(heavy, mid, lo)
        hi = tl.where(heavy, hi, mid)
    threshold = tl.where(top_p < 1.0, tl.maximum(hi, k_bits), k_bits)
    floor = p_max * min_p

    best = zero_f - 1.0
    best_index = zero_i
    for start in range(0, vocab, BLOCK):
        p, bits, cols, mask = _probs_block(logits_ptr, row_offset, start, vocab, temperature,
                                           row_max, row_sum, BLOCK)
        noise = tl.load(noise_ptr + row.to(tl.int64) * stride_noise + cols, mask=mask, other=1.0)
        keep = mask & (bits >= threshold) & (p >= floor)
        score = tl.where(keep, p / noise, -1.0)
        block_best = tl.max(score, axis=0)
        block_index = tl.argmax(score, axis=0) + start
        better = block_best > best
        best_index = tl.where(better, block_index, best_index)
        best = tl.where(better, block_best, best)
    tl.store(out_ptr + row, best_index.to(tl.int64))


def sample_triton(logits: torch.Tensor, params: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float32; params [B, 4] float32 (temperature, top_k or V, top_p, min_p);
    noise [B, V] Exp(1) draws. Returns token ids [B] int64."""
    batch, vocab = logits.shape
    assert logits.stride(-1) == 1 and noise.stride(-1) == 1 and params.is_contiguous()
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch:
        _sample_kernel[(batch,)](logits, noise, params, out, vocab, logits.stride(0), noise.stride(0),
                                 BLOCK=2048, STEPS=BISECT_STEPS, num_warps=8)
    return out
