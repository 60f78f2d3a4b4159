"""Which weights produced each token, and what an update does to requests in flight.

Two counters: `weight_version` is the trainer's label (stamped on results); the weight
*epoch* (KVManager.epoch) goes up on every write of the weights, labelled or not, and
keys the radix cache, so KV computed by other weights is never matched by a request.

A request keeps `weight_version_spans`: one [first output index, label] per run of
tokens sampled under one label, so an answer that crossed an update says where. A
request that keeps KV across an update (mode in_place) samples on KV that older weights
computed: each such token counts in `stale_kv_tokens`, and the result reports it.

Modes for the requests in flight at an update (weight_sync/service.py picks one;
Scheduler.weights_changed carries it out):
  wait      finish them on the old weights first; new requests wait (SGLang's default)
  retract   they continue on the new weights; their KV is recomputed; spans say where
  in_place  they continue on the new weights on their old KV (marked stale_kv_tokens)
  restart   their tokens are dropped and they start over on the new weights
  abort     they finish with finish_reason abort
"""

from __future__ import annotations

from rollserve.scheduler.request import Req


def record_token(req: Req, weight_version: str, epoch: int) -> None:
    """The request just appended a token sampled under `weight_version` / `epoch`."""
    index = len(req.output_ids) - 1
    spans = req.weight_version_spans
    if not spans or spans[-1][1] != weight_version:
        spans.append([index, weight_version])
    if req.kv_epoch != epoch:
        req.stale_kv_tokens += 1


def reset_for_restart(req: Req) -> None:
    """Forget what the request generated: it is prefilled again from its prompt alone.
    Only for requests none of whose output was sent (see can_restart)."""
    req.output_ids = []
    req.sent_output_len = 0
    req.finished_reason = None
    req.trim_stop = None
    req.first_token_time = None
    req.weight_version_spans = []
    req.stale_kv_tokens = 0
    req.retracted_computed = 0  # nothing of it is to be found again: it all starts over
    clear_pending_logprobs(req)


def clear_pending_logprobs(req: Req) -> None:
    for pending in (req.pending_input_logprobs, req.pending_input_top, req.pending_input_ids,
                    req.pending_output_logprobs, req.pending_output_top, req.pending_output_ids):
        pending.clear()


def can_restart(req: Req) -> bool:
    """A streamed request whose tokens already went out cannot take them back."""
    return req.sent_output_len == 0

