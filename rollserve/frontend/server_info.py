"""/get_server_info (and Engine.get_server_info) in SGLang's shape.

SGLang answers with every ServerArgs field, the scheduler's start-up info (status,
max_total_num_tokens, max_req_input_len), `internal_states` (one dict per data-parallel
rank: last_gen_throughput, memory_usage, ...) and `version`. Here: every SGLang field
(a flag rollserve does not implement shows the value that applies here: its default, or
what rollserve does instead), rollserve's own arguments, the scheduler's live numbers,
one internal state, and the version.
"""

from __future__ import annotations

from typing import Any, Dict

from rollserve.frontend import flag_table
from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.sglang_flags import SGLANG_FLAGS


def server_info(args: ServerArgs, load: Dict[str, Any], version: str) -> Dict[str, Any]:
    """`load` is the scheduler's get_info answer (TokenizerManager.get_load())."""
    out: Dict[str, Any] = {flag.dest: flag_table.policy(flag.dest).reported(flag.default)
                           for flag in SGLANG_FLAGS if flag.dest not in flag_table.CLI_ONLY}
    out.update(args.public_dict())
    live = {k: v for k, v in load.items() if k not in ("success", "status", "pid")}
    out.update(live)
    out["status"] = "ready"
    out["internal_states"] = [{
        "last_gen_throughput": live.get("last_gen_throughput"),
        "memory_usage": live.get("memory_usage"),
        "avg_spec_accept_length": live.get("avg_spec_accept_length"),  # None: no speculation
        "waiting_queue_size": live.get("num_queued_reqs"),
        "running_batch_size": live.get("num_running_reqs"),
        "weight_version": live.get("weight_version"),
    }]
    out["version"] = version
    return out
