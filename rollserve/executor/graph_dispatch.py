"""Which graph, if any, runs a forward: the decode graphs (every request one token) or the
speculative verify graphs (chains, executor/verify_graph_runner.py); None sends the forward
down the model runner's eager path.

Both kinds return the hidden states a draft model reads when the runner has a HiddenCapture
(they were captured with it), so steps with a draft model replay graphs as well.
"""

from __future__ import annotations

from typing import Optional

import torch

from rollserve.core.batch import ScheduleBatch
from rollserve.executor.forward_batch import HostBatch
from rollserve.executor.verify_graph_runner import VerifyGraphRunner, verify_sizes


def build_verify_runner(runner) -> Optional[VerifyGraphRunner]:
    """The verify graphs of a ModelRunner, where its decode graphs exist (same conditions:
    CUDA or eager mode, not --disable-cuda-graph, a backend that captures) and chains were
    asked for (enable_verify_graphs); sizes from --cuda-graph-bs / --cuda-graph-max-bs."""
    if runner.verify_rows < 2 or runner.graph_runner is None:
        return None
    backend = runner.attn_backend
    if not backend.supports_verify_cuda_graph and not runner.graphs_eager:
        return None  # the backend cannot fix a verify step's metadata at capture: eager verify
    config = runner.config
    sizes = verify_sizes(config.cuda_graph_max_bs, config.cuda_graph_bs, runner.max_running_requests)
    if not sizes:
        return None
    return VerifyGraphRunner(runner.model, runner.kv_pool, runner.req_pool.req_to_token,
                             runner.future_tokens, backend, sizes, runner.verify_rows,
                             runner.routed_experts, runner.hidden_capture,
                             runner.graphs_eager or None)


def replay_graphs(runner, host: HostBatch, batch: ScheduleBatch) -> Optional[tuple]:
    """(logits, the draft's hidden states or None, row offsets) from a graph replay, or None
    when no graph fits this forward."""
    if runner.pooling is not None:
        return None
    graphs, capture = runner.graph_runner, runner.hidden_capture
    if graphs is None or graphs.hidden_capture is not capture:
        return None  # graphs captured before a draft model arrived return no hidden states
    if graphs.can_run(host, all(e.logit_rows == [0] for e in batch.entries)):
        with torch.inference_mode():
            logits, hidden = graphs.replay(host)
        return logits, hidden, list(range(len(batch.entries) + 1))
    verify = runner.verify_graph_runner
    if verify is not None and verify.hidden_capture is capture and \
            verify.can_run(host, [e.logit_rows for e in batch.entries]):
        with torch.inference_mode():
            return verify.replay(host)
    return None
