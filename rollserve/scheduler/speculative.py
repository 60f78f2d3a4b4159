"""Speculative decoding in the scheduler: draft, verify in one forward, commit what holds.

Each step, every running request gets drafts from the drafter (NGRAM: its own context,
scheduler/ngram_drafter.py; EAGLE, EAGLE3, NEXTN: a draft model that catches up after each
forward, scheduler/model_drafter.py) and one decode entry [last token, drafts...] whose KV slots
are allocated as for a short prefill chunk; the target computes all of them in one
batched extend over the paged KV cache (prefill chunks of other requests ride along as
usual). executor/spec_verify.py decides which drafts hold and draws the next token;
the committed tokens go through the usual per-token path (stop ids and strings,
max_new_tokens, logprobs, provenance), so a request that stops on an accepted draft
ends there. A draft tree (--speculative-eagle-topk > 1; NGRAM's with
--speculative-ngram-max-bfs-breadth > 1, scheduler/ngram_tree.py) is one such entry too, its
rows [last token, nodes] at kv_len + depth under a tree mask; the accepted path's slots become
the request's (scheduler/tree_commit.py). The KV of tokens not committed (rejected drafts,
or drafts past a stop) is freed at once: between steps a request holds exactly seq_len - 1 slots, as without
speculation, and the pool is fully free when idle.

Drafts are cut to the room the pool has beyond one slot per running request (a step
never retracts for a draft), to max_new_tokens and to the context length.

Under the overlap scheduler (CUDA's default) scheduler/overlap_speculative.py runs this
class with the step split: the commit before the next step is built (its drafts depend on
how many tokens this one accepted), the outputs and releases beside the next forward.
Chain verify forwards replay CUDA graphs (executor/verify_graph_runner.py: every request
padded to num_draft_tokens rows); trees, prefill chunks riding along and batches above the
captured sizes run eager. Steps where no request has a draft replay the decode graphs, with a
draft model too (the graphs return the hidden states it reads, executor/graph_dispatch.py).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch

from rollserve.core.batch import BatchEntry, ScheduleBatch
from rollserve.core.draft_tree import DraftTree
from rollserve.executor.model_runner import ForwardOutput
from rollserve.executor.spec_verify import Verifier, VerifyInput
from rollserve.scheduler.model_drafter import ModelDrafter
from rollserve.scheduler.ngram_tree import make_ngram_drafter
from rollserve.scheduler.request import Req
from rollserve.scheduler.scheduler import Scheduler
from rollserve.scheduler.tree_commit import keep_path_slots

logger = logging.getLogger(__name__)

SPECULATIVE_ALGORITHMS = ("NGRAM", "EAGLE", "EAGLE3", "NEXTN")  # implemented; STANDALONE is not
DRAFT_MODEL_ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN")  # scheduler/model_drafter.py


def make_drafter(config, runner):
    num_drafts = config.speculative_num_draft_tokens - 1
    if config.speculative_algorithm == "NGRAM":  # a chain, or trees (scheduler/ngram_tree.py)
        return make_ngram_drafter(config, num_drafts)
    if config.speculative_algorithm in DRAFT_MODEL_ALGORITHMS:
        return ModelDrafter(runner, config.speculative_algorithm,
                            config.speculative_draft_model_path, num_drafts,
                            config.speculative_eagle_topk, config.speculative_num_steps)
    raise ValueError(f"speculative_algorithm: {config.speculative_algorithm!r} is not implemented "
                     f"(implemented: {', '.join(SPECULATIVE_ALGORITHMS)})")


def drafts_chains(config) -> bool:
    """Whether every draft of this server is a chain (topk 1; NGRAM's max BFS breadth 1)."""
    if config.speculative_algorithm == "NGRAM":
        return config.speculative_ngram_max_bfs_breadth <= 1
    return config.speculative_eagle_topk <= 1


class SpeculativeScheduler(Scheduler):
    def __init__(self, config, runner, tokenizer, eos_token_ids):
        super().__init__(config, runner, tokenizer, eos_token_ids)
        self.drafter = make_drafter(config, runner)
        if drafts_chains(config):  # trees carry a per-step mask: their verify stays eager
            runner.enable_verify_graphs(config.speculative_num_draft_tokens)
        self.verifier = Verifier(self.sampler, self.logprob_mode)
        self._drafted: Dict[int, Tuple[int, BatchEntry]] = {}  # id(req) -> (drafts, its entry)

    def add_request(self, msg) -> None:
        super().add_request(msg)
        req = self.waiting[-1]
        if isinstance(req, Req):
            req.spec_verify_ct = 0  # the server speculates: results carry SGLang's spec_* meta

    # ---- draft --------------------------------------------------------------------------
    def _decode_entries(self) -> List[BatchEntry]:
        self._ensure_decode_slots()
        reqs = list(self.running)
        if not reqs:
            return []
        spare = self.kv.available_slots() - len(reqs)
        drafts = []
        for req in reqs:
            most = min(spare, req.remaining_new_tokens - 1,
                       self.runner.context_len - req.seq_len - 1)
            # a constrained request takes no drafts: its one row gets the grammar's mask
            draft = self.drafter.propose(req, most) if most > 0 and req.grammar is None else []
            spare -= len(draft.tokens if isinstance(draft, DraftTree) else draft)
            drafts.append(draft)
        trees = [d if isinstance(d, DraftTree) else None for d in drafts]
        drafts = [d.tokens if isinstance(d, DraftTree) else d for d in drafts]
        slots = self.kv.alloc_slots(len(reqs) + sum(map(len, drafts)))
        entries, offset = [], 0
        for req, draft, tree in zip(reqs, drafts, trees):
            n = 1 + len(draft)
            own = slots[offset:offset + n]  # a tree: one slot per node (scheduler/tree_commit.py)
            offset += n
            entries.append(BatchEntry(req, req.kv_len, [self._decode_input(req)] + draft, own,
                                      sample=True, logit_rows=list(range(n)), is_decode=True,
                                      tree_parents=tree.row_parents() if tree and draft else None))
            self.kv.append_slots(req, own)
        return entries

    # ---- verify ---------------------------------------------------------------------------
    def _sample(self, batch: ScheduleBatch,
                result: ForwardOutput) -> Dict[int, List[Tuple[int, Optional[torch.Tensor]]]]:
        """Entry index -> the tokens it commits (with their logprob rows when wanted)."""
        picks, inputs = [], []
        for i, entry in enumerate(batch.entries):
            req = entry.req
            if req.finished:
                if entry.is_decode:  # aborted meanwhile: keep only KV of tokens it holds
                    self.kv.truncate(req, req.seq_len)
                continue
            if not entry.sample:
                continue
            drafts = entry.tokens[1:] if entry.is_decode else []
            first = result.row_offsets[i + 1] - 1 - len(drafts)
            picks.append(i)
            inputs.append(VerifyInput(req.sampling_params, req.input_ids, req.output_ids,
                                      self.eos_token_ids, drafts, first,
                                      parents=entry.tree_parents))
            if entry.is_decode:
                self._drafted[id(req)] = (len(drafts), entry)
        if not picks:
            return {}
        wants = [batch.entries[i].req.return_logprob for i in picks]
        logits = self._constrained(result.logits, [(inp.first_row, batch.entries[i].req)
                                                   for i, inp in zip(picks, inputs)])
        committed = self.verifier.verify(logits, inputs, wants)
        return dict(zip(picks, committed))

    def _constrained(self, logits: torch.Tensor, rows: List[Tuple[int, Req]]) -> torch.Tensor:
        """The verify logits with the grammar's mask on each constrained request's row (such
        a request has no drafts, so that row is its only one; scheduler/grammar.py)."""
        hit = [(row, req) for row, req in rows if req.grammar is not None]
        if self.grammar is None or not hit:
            return logits
        index = torch.tensor([row for row, _ in hit], device=logits.device)
        out = logits.to(torch.float32, copy=True)
        out[index] = self.grammar.constrain(logits[index], [req for _, req in hit]).to(out.dtype)
        return out

    def _process_result(self, batch: ScheduleBatch, result: ForwardOutput):
        outputs = super()._process_result(batch, result)
        if isinstance(self.drafter, ModelDrafter):  # the draft catches up; the next chains
            self.drafter.after_step(batch, result)
        return outputs

    def end_dp_step(self) -> None:
        """DP attention, at the end of each step: the draft ran inside it, so the draft
        forwards this rank did not run are run now, idle (executor/draft_lockstep.py)."""
        if isinstance(self.drafter, ModelDrafter):
            self.drafter.settle_draft_forwards()

    def weights_changed(self, mode: str, flush_cache: bool = True):
        outputs = super().weights_changed(mode, flush_cache)
        if isinstance(self.drafter, ModelDrafter):
            self.drafter.weights_changed()
        return outputs

    # ---- commit ---------------------------------------------------------------------------
    def _commit(self, req: Req, tokens: List[Tuple[int, Optional[torch.Tensor]]]) -> None:
        before = len(req.output_ids)
        verified = self._drafted.pop(id(req), None)
        if verified is not None and verified[1].tree_parents is not None:
            # the accepted path's slots become the request's, before anything may cache them
            keep_path_slots(self.kv.req_pool, verified[1], [t for t, _ in tokens[:-1]])
        for token, logprobs in tokens:
            self._append_token(req, token, logprobs)
            if req.finished:
                break
        if verified is None:  # the first token, sampled after the prompt
            return
        drafted = verified[0]
        accepted = len(tokens) - 1
        req.spec_verify_ct += 1
        req.spec_draft_tokens += drafted
        req.spec_accept_tokens += accepted
        self.stats.record_verify(drafted, accepted, len(req.output_ids) - before)
        self.kv.truncate(req, req.seq_len - 1)  # rejected drafts' KV, and any past a stop
