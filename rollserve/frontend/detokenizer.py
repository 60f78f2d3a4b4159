"""Incremental detokenization in its own process, off the HTTP event loop."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List

import zmq

from rollserve.core.io import BatchTokenOutput, TokenOutput
from rollserve.core.logging_setup import configure_logging, exit_with_parent, ipc_dir_of
from rollserve.core.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class DecodeState:
    ids: List[int] = field(default_factory=list)
    text: str = ""  # decoded so far
    sent: int = 0  # characters of `text` already sent
    prefix_offset: int = 0  # ids[prefix_offset:read_offset] is the context of the next decode
    read_offset: int = 0


class IncrementalDecoder:
    """Turns token deltas into text deltas, never splitting a multi-byte character and
    never streaming text a stop string might still claim."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.states: Dict[str, DecodeState] = {}

    def process(self, out: TokenOutput) -> TokenOutput:
        state = self.states.setdefault(out.rid, DecodeState())
        state.ids.extend(out.new_ids)
        finished = out.finished_reason is not None
        state.text += self._decode_new(state, out, flush=finished)
        if finished:
            self.states.pop(out.rid, None)
            final = state.text
            if out.trim_stop and out.trim_stop in final:
                final = final[: final.index(out.trim_stop)]
            out.text_delta = final[state.sent:]
        else:
            visible = len(state.text) - out.hold_back_chars
            out.text_delta = state.text[state.sent:visible] if visible > state.sent else ""
            state.sent += len(out.text_delta)
        return out

    def _decode_new(self, state: DecodeState, out: TokenOutput, flush: bool) -> str:
        def decode(ids):
            return self.tokenizer.decode(
                ids, skip_special_tokens=out.skip_special_tokens,
                spaces_between_special_tokens=out.spaces_between_special_tokens)

        prefix = decode(state.ids[state.prefix_offset:state.read_offset])
        full = decode(state.ids[state.prefix_offset:])
        if len(full) > len(prefix) and (flush or not full.endswith("\ufffd")):
            state.prefix_offset, state.read_offset = state.read_offset, len(state.ids)
            return full[len(prefix):]
        return ""


def run_detokenizer_process(tokenizer_path: str, ports: dict, log_level: str,
                            trust_remote_code: bool = False) -> None:
    configure_logging(log_level, prefix="detokenizer")
    exit_with_parent(ipc_dir_of(ports))
    decoder = IncrementalDecoder(load_tokenizer(tokenizer_path, trust_remote_code=trust_remote_code))
    context = zmq.Context()
    context.setsockopt(zmq.LINGER, 0)
    recv = context.socket(zmq.PULL)
    recv.bind(ports["detokenizer"])
    send = context.socket(zmq.PUSH)
    send.connect(ports["tokenizer"])
    while True:
        msg = recv.recv_pyobj()
        if isinstance(msg, BatchTokenOutput):
            for out in msg.outputs:
                if not isinstance(out, TokenOutput):
                    continue  # embeddings and scores pass through untouched
                try:
                    decoder.process(out)
                except Exception:  # one undecodable output must not stop the others
                    logger.exception("detokenizing %s failed", out.rid)
        send.send_pyobj(msg)
