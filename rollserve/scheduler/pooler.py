"""Embedding and classification requests inside the scheduler.

They take the generation path up to the end of prefill (waiting queue, admission,
chunked prefill, prefix cache where PoolingSpec allows it) and never decode: each
prefill chunk hands the hidden states of the rows the pooling needs to the Pooler,
which accumulates them on the request; once the prompt is complete it applies the
model's head (a classifier's score; nothing for embeddings), normalizes if asked,
and finishes the request, whose output is then one EmbeddingOutput.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from rollserve.executor.model_runner import ModelRunner
from rollserve.executor.pooling_model import PoolingSpec
from rollserve.core.io import EmbeddingOutput, TokenizedEmbeddingReq
from rollserve.scheduler.request import Req
from rollserve.core.sampling_params import SamplingParams


@dataclass(eq=False)  # identity, as Req: `req in running` must not compare tensors
class EmbeddingReq(Req):
    pooled: Optional[torch.Tensor] = None  # float32 running sum / max / chosen row
    pooled_rows: int = 0
    embedding: Optional[List[float]] = None

    @classmethod
    def from_message(cls, msg: TokenizedEmbeddingReq) -> "EmbeddingReq":
        return cls(rid=msg.rid, input_ids=list(msg.input_ids),
                   sampling_params=SamplingParams(max_new_tokens=0))

    def take_output(self, weight_version: str) -> EmbeddingOutput:
        return EmbeddingOutput(rid=self.rid, embedding=self.embedding,
                               finished_reason=self.finished_reason,
                               prompt_tokens=len(self.input_ids), cached_tokens=self.cached_tokens,
                               weight_version=weight_version)


class Pooler:
    def __init__(self, model, spec: PoolingSpec):
        self.model = model
        self.spec = spec

    @classmethod
    def for_runner(cls, runner: ModelRunner) -> Optional["Pooler"]:
        """The runner's pooler, or None when it runs a generation model."""
        spec = runner.pooling
        return None if spec is None else cls(runner.model, spec)

    @property
    def allows_prefix_cache(self) -> bool:
        return self.spec.allows_prefix_cache

    @property
    def allows_chunking(self) -> bool:
        return self.spec.allows_chunking

    def rows(self, req: Req, start: int, n: int) -> List[int]:
        """Offsets within the chunk [start, start + n) whose hidden states the pooling reads."""
        method = self.spec.method
        if method == "last":
            return [n - 1] if start + n == req.seq_len else []
        if method == "cls":
            return [0] if start == 0 else []
        return list(range(n))

    def absorb(self, batch, result) -> None:
        """Accumulates each entry's rows (result.hidden); finishes the requests whose input
        is now complete."""
        complete = []
        for i, entry in enumerate(batch.entries):
            req = entry.req
            if req.finished:  # aborted while this step ran
                continue
            self._accumulate(req, result.hidden[result.row_offsets[i]:result.row_offsets[i + 1]])
            if entry.completes_prompt:
                complete.append(req)
        if complete:
            self._finish(complete)

    def _accumulate(self, req: EmbeddingReq, hidden: torch.Tensor) -> None:
        if hidden.shape[0] == 0:
            return
        hidden = hidden.float()
        if self.spec.method in ("mean", "mean_sqrt_len"):
            part = hidden.sum(dim=0)
            req.pooled = part if req.pooled is None else req.pooled + part
        elif self.spec.method == "max":
            part = hidden.max(dim=0).values
            req.pooled = part if req.pooled is None else torch.maximum(req.pooled, part)
        else:  # cls / last: the one row asked for
            req.pooled = hidden[0]
        req.pooled_rows += hidden.shape[0]

    def _reduce(self, req: EmbeddingReq) -> torch.Tensor:
        if self.spec.method == "mean":
            return req.pooled / req.pooled_rows
        if self.spec.method == "mean_sqrt_len":
            return req.pooled / req.pooled_rows ** 0.5
        return req.pooled

    @torch.inference_mode()
    def _finish(self, reqs: List[EmbeddingReq]) -> None:
        pooled = torch.stack([self._reduce(r) for r in reqs]).to(self.model.dtype)
        out = self.model.pooled_output(pooled).float()
        if self.spec.normalize:
            out = F.normalize(out, p=2, dim=-1)
        for req, vector in zip(reqs, out.cpu().tolist()):
            req.embedding = vector
            req.pooled = None
            req.finish("length", length=0)  # as a generation with max_new_tokens=0
