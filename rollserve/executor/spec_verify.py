"""Speculative decoding's verify step: which draft tokens the target model accepts.

The verify forward itself is an ordinary extend over the paged KV cache: each decoding
request brings [its last token, d draft tokens] at positions kv_len .. kv_len + d and
asks for the logits of every one of those rows (a chain, topk=1: causal attention is
the right mask; a tree brings [last token, nodes] at kv_len + depth under a tree mask,
core/draft_tree.py). Row j's logits are the target's next-token distribution after the
request's tokens plus drafts[:j], so row j is processed exactly as the sampler would
process that step: custom logit processor and penalties over output + drafts[:j], then
temperature, top_k, top_p, min_p.

Acceptance (the pure rule is `speculative_accept`):
* greedy rows accept the longest prefix of drafts equal to the target's argmax, then
  commit the argmax of the first row that disagreed (or of the last row): exactly the
  tokens greedy decoding would give;
* sampled rows use speculative sampling (Leviathan et al. / Chen et al.): draft x_j,
  drawn from q_j, is kept with probability min(1, p_j(x_j) / q_j(x_j)); at the first
  rejection the token is drawn from the residual max(p_j - q_j, 0) renormalized, and
  after d acceptances from p_d. Each committed token is then distributed as p.
  A draft without a distribution (NGRAM: q_j is one-hot on x_j) passes q=None.

Tree drafts (VerifyInput.parents, --speculative-eagle-topk > 1) follow spec_tree.py's rule.

Logprobs of committed tokens are the target's (compute_sampling_logprobs of their rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from rollserve.core.sampling_params import SamplingParams
from rollserve.executor.spec_tree import tree_accept_greedy, tree_residual, tree_walk_sampled
from rollserve.executor.sampler import (Sampler, SamplingRow, apply_custom_processor,
                                        apply_penalties, compute_sampling_logprobs, row_seed)
from rollserve.kernels.dispatch import host_to_device
from rollserve.kernels.sampling import filtered_probs


@dataclass
class VerifyInput:
    """One request's rows of a verify forward: logits rows [first, first + len(drafts)]."""

    params: SamplingParams
    prompt_ids: List[int]
    output_ids: List[int]  # generated before this step
    eos_token_ids: frozenset
    drafts: List[int]
    first_row: int  # index of its row 0 in the forward's logits
    draft_probs: Optional[torch.Tensor] = None  # [len(drafts), V] q, or None: one-hot drafts
    # a tree (spec_tree.py): the parent row of each row [root, drafts...]; None: a chain
    parents: Optional[List[int]] = None

    def sampling_rows(self) -> List[SamplingRow]:
        """The sampler's view of each verify row: output so far plus the drafts on its path."""
        if self.parents is None:
            return [SamplingRow(self.params, self.prompt_ids, self.output_ids + self.drafts[:j],
                                self.eos_token_ids) for j in range(len(self.drafts) + 1)]
        paths: List[List[int]] = []
        for r, p in enumerate(self.parents):
            paths.append([] if p < 0 else paths[p] + [self.drafts[r - 1]])
        return [SamplingRow(self.params, self.prompt_ids, self.output_ids + path,
                            self.eos_token_ids) for path in paths]


def speculative_accept(p: torch.Tensor, drafts: torch.Tensor, num_drafts: torch.Tensor,
                       uniform: torch.Tensor, noise: torch.Tensor,
                       q: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The accept/reject rule of speculative sampling over a batch of B chains.

    p [B, K+1, V] target distributions (row j after j drafts), drafts [B, K] int64,
    num_drafts [B] (rows past a chain's num_drafts are ignored), uniform [B, K] in [0, 1),
    noise [B, V] Exp(1) for the final draw, q [B, K, V] draft distributions or None for
    one-hot drafts. Returns (accepted [B] int64, next token [B] int64): the chain keeps
    drafts[:accepted] and then commits the next token."""
    B, K = drafts.shape
    if K:
        p_draft = p[:, :K].gather(2, drafts.unsqueeze(2)).squeeze(2)  # p_j(x_j)
        q_draft = (torch.ones_like(p_draft) if q is None
                   else q.gather(2, drafts.unsqueeze(2)).squeeze(2))
        # u < p/q  <=>  u * q < p: keeps q = 0 (a draft q never proposes) from dividing by zero
        ok = (uniform * q_draft < p_draft) & (torch.arange(K, device=p.device) < num_drafts[:, None])
        accepted = ok.to(torch.int64).cumprod(dim=1).sum(dim=1)
    else:
        accepted = torch.zeros(B, dtype=torch.int64, device=p.device)
    rows = torch.arange(B, device=p.device)
    final = p[rows, accepted]  # [B, V]
    rejected = accepted < num_drafts
    if rejected.any():
        at = accepted.clamp(max=max(K - 1, 0))
        q_at = (torch.zeros_like(final).scatter_(1, drafts[rows, at].unsqueeze(1), 1.0)
                if q is None else q[rows, at])
        residual = (final - q_at).clamp_(min=0.0)
        # a residual of all zeros (p == q up to rounding) cannot be reached exactly; keep p then
        residual = torch.where(residual.sum(dim=1, keepdim=True) > 0, residual, final)
        final = torch.where(rejected[:, None], residual, final)
    return accepted, (final / noise).argmax(dim=1)


def greedy_accept(target: torch.Tensor, drafts: torch.Tensor,
                  num_drafts: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """target [B, K+1] argmax token of each row, drafts [B, K] -> (accepted, next token)."""
    B, K = drafts.shape
    ok = (drafts == target[:, :K]) & (torch.arange(K, device=target.device) < num_drafts[:, None])
    accepted = ok.to(torch.int64).cumprod(dim=1).sum(dim=1) if K else \
        torch.zeros(B, dtype=torch.int64, device=target.device)
    return accepted, target[torch.arange(B, device=target.device), accepted]


class Verifier:
    """Turns one verify forward's logits into the tokens each request commits."""

    def __init__(self, sampler: Sampler, logprob_mode: str):
        self.sampler = sampler
        self.logprob_mode = logprob_mode

    def verify(self, logits: torch.Tensor, inputs: Sequence[VerifyInput],
               wants_logprobs: Sequence[bool]) -> List[List[Tuple[int, Optional[torch.Tensor]]]]:
        """For each input, the tokens it commits (accepted drafts, then one more), each with
        its row of target logprobs when wanted."""
        vocab = self.sampler.vocab_size
        rows = [r for inp in inputs for r in inp.sampling_rows()]
        index = [inp.first_row + j for inp in inputs for j in range(len(inp.drafts) + 1)]
        raw = logits[host_to_device(torch.tensor(index, dtype=torch.int64), logits.device)]
        processed = apply_custom_processor(raw[:, :vocab].float(), rows, self.sampler.logit_processor)
        processed = apply_penalties(processed, rows)
        offsets = [0]
        for inp in inputs:
            offsets.append(offsets[-1] + len(inp.drafts) + 1)
        accepted = [0] * len(inputs)
        next_ids = [0] * len(inputs)
        kept: List[List[int]] = [[] for _ in inputs]  # tree inputs: the accepted path's rows
        trees = [b for b, inp in enumerate(inputs) if inp.parents is not None]
        chains = [b for b, inp in enumerate(inputs) if inp.parents is None]
        greedy = [b for b in chains if inputs[b].params.is_greedy]
        sampled = [b for b in chains if not inputs[b].params.is_greedy]
        if greedy:
            self._run(greedy, inputs, offsets, processed.argmax(dim=-1), None, accepted, next_ids)
        if sampled:
            self._run(sampled, inputs, offsets, None, processed, accepted, next_ids)
        if trees:
            self._run_trees(trees, inputs, offsets, processed, kept, next_ids)
        out = []
        for b, inp in enumerate(inputs):
            path = kept[b] if inp.parents is not None else list(range(accepted[b] + 1))
            tokens = [inp.drafts[r - 1] for r in path[1:]] + [next_ids[b]]
            logprobs: List[Optional[torch.Tensor]] = [None] * len(tokens)
            if wants_logprobs[b]:
                at = [offsets[b] + r for r in path]
                lp = compute_sampling_logprobs(raw[host_to_device(torch.tensor(at), raw.device)],
                                               [rows[i] for i in at], vocab,
                                               self.logprob_mode, self.sampler.logit_processor)
                logprobs = list(lp)
            out.append(list(zip(tokens, logprobs)))
        return out

    def _run(self, batch: List[int], inputs: Sequence[VerifyInput], offsets: List[int],
             argmax: Optional[torch.Tensor], processed: Optional[torch.Tensor],
             accepted: List[int], next_ids: List[int]) -> None:
        """Accepts drafts for the requests `batch` (all greedy: argmax given; all sampled:
        processed logits given), padding every chain to the longest."""
        device = (argmax if argmax is not None else processed).device
        K = max(len(inputs[b].drafts) for b in batch)
        # padded row j of chain b: its row min(j, d_b) (past d_b the rows are never read)
        pick = [offsets[b] + min(j, len(inputs[b].drafts)) for b in batch for j in range(K + 1)]
        pick_t = host_to_device(torch.tensor(pick, dtype=torch.int64), device)
        drafts = host_to_device(torch.tensor([inputs[b].drafts + [0] * (K - len(inputs[b].drafts))
                                              for b in batch], dtype=torch.int64).view(len(batch), K),
                                device)
        num = host_to_device(torch.tensor([len(inputs[b].drafts) for b in batch], dtype=torch.int64),
                             device)
        if argmax is not None:
            acc, nxt = greedy_accept(argmax[pick_t].view(len(batch), K + 1), drafts, num)
        else:
            params = [inputs[b].params for b in batch for _ in range(K + 1)]
            p = filtered_probs(processed[pick_t], params).view(len(batch), K + 1, -1)
            uniform, noise = self._randoms([inputs[b] for b in batch], K, p.shape[-1], device)
            q = None
            if any(inputs[b].draft_probs is not None for b in batch):
                q = torch.zeros(len(batch), K, p.shape[-1], device=device)
                for i, b in enumerate(batch):
                    d = len(inputs[b].drafts)
                    if inputs[b].draft_probs is None:
                        q[i, :d].scatter_(1, drafts[i, :d].unsqueeze(1), 1.0)
                    else:
                        q[i, :d] = inputs[b].draft_probs[:d].to(device)
            acc, nxt = speculative_accept(p, drafts, num, uniform, noise, q)
        for b, a, t in zip(batch, acc.tolist(), nxt.tolist()):
            accepted[b], next_ids[b] = a, t

    def _run_trees(self, batch: List[int], inputs: Sequence[VerifyInput], offsets: List[int],
                   processed: torch.Tensor, kept: List[List[int]], next_ids: List[int]) -> None:
        """The tree rule (spec_tree.py) for the tree inputs `batch`: two host reads in all."""
        greedy = [b for b in batch if inputs[b].params.is_greedy]
        sampled = [b for b in batch if not inputs[b].params.is_greedy]
        if greedy:
            at = [offsets[b] + r for b in greedy for r in range(len(inputs[b].parents))]
            top = processed[host_to_device(torch.tensor(at), processed.device)].argmax(dim=-1).tolist()
            i = 0
            for b in greedy:
                n = len(inputs[b].parents)
                kept[b], next_ids[b] = tree_accept_greedy(top[i:i + n], inputs[b].parents,
                                                          [0] + inputs[b].drafts)
                i += n
        if not sampled:
            return
        device = processed.device
        at = [offsets[b] + r for b in sampled for r in range(len(inputs[b].parents))]
        params = [inputs[b].params for b in sampled for _ in inputs[b].parents]
        p = filtered_probs(processed[host_to_device(torch.tensor(at), device)], params)
        # p of each node's token at its parent row, in one gather
        parent_at, token_at, starts = [], [], [0]
        for b in sampled:
            inp = inputs[b]
            parent_at.extend(starts[-1] + max(q, 0) for q in inp.parents)
            token_at.extend([0] + inp.drafts)
            starts.append(starts[-1] + len(inp.parents))
        p_child = p[host_to_device(torch.tensor(parent_at), device),
                    host_to_device(torch.tensor(token_at), device)].tolist()
        width = max(len(inputs[b].parents) for b in sampled)
        uniform, noise = self._randoms([inputs[b] for b in sampled], width, p.shape[-1], device)
        uniform = uniform.tolist()
        last, removed = [], []
        for i, b in enumerate(sampled):
            inp = inputs[b]
            path, rejected = tree_walk_sampled(p_child[starts[i]:starts[i + 1]], inp.parents,
                                               [0] + inp.drafts, uniform[i])
            kept[b] = path
            last.append(starts[i] + path[-1])
            removed.append([inp.drafts[r - 1] for r in rejected])
        final = tree_residual(p[host_to_device(torch.tensor(last), device)], removed)
        for b, t in zip(sampled, (final / noise).argmax(dim=1).tolist()):
            next_ids[b] = t

    def _randoms(self, inputs: Sequence[VerifyInput], K: int, vocab: int, device):
        """uniform [B, K] and Exp(1) noise [B, V]; a request with a seed draws from a generator
        seeded by (seed, tokens generated so far), as the sampler does."""
        uniform = torch.empty(len(inputs), K + vocab, dtype=torch.float32, device=device)
        if any(inp.params.seed is None for inp in inputs):
            uniform.uniform_(generator=self.sampler.generator)
        for i, inp in enumerate(inputs):
            if inp.params.seed is not None:
                gen = self.sampler.row_generator
                gen.manual_seed(row_seed(inp.params.seed, len(inp.output_ids)))
                uniform[i].uniform_(generator=gen)
        return uniform[:, :K], uniform[:, K:].log().neg()

