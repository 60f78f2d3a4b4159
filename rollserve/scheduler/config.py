"""What the scheduler process is built from: its own fields plus the executor's, frozen once
the server has resolved them (frontend/server_args.py makes it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from rollserve.executor.config import ExecutorConfig

SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight", "random")


@dataclass(frozen=True)
class SchedulerConfig:
    executor: ExecutorConfig
    tokenizer_path: str
    max_prefill_tokens: int = 16384
    chunked_prefill_size: Optional[int] = None  # None: the default for the device; -1: off
    schedule_policy: str = "fcfs"
    schedule_conservativeness: float = 1.0
    disable_radix_cache: bool = False
    random_seed: Optional[int] = None
    stream_interval: int = 1
    disable_overlap_schedule: bool = False
    decode_log_interval: int = 40
    watchdog_timeout: float = 300.0
    dist_timeout: Optional[int] = None  # weight-update group join and broadcasts; None: 300 s
    log_level: str = "info"
    grammar_backend: str = "xgrammar"  # constrained decoding (scheduler/grammar.py), or "none"
    json_any_whitespace: bool = True  # False: --constrained-json-disable-any-whitespace
    disable_jump_forward: bool = False  # grammar-forced tokens unsampled (scheduler/jump_forward.py)
    custom_logit_processor: Optional[str] = None  # "module:attribute", SGLang's custom_params hook
    weight_version: str = "default"  # the version the first weights carry; the scheduler owns it after
    # speculative decoding (scheduler/speculative.py): None (off) or NGRAM; tokens per verify
    # chain (the last token + drafts); NGRAM's longest match window plus drafts
    speculative_algorithm: Optional[str] = None
    speculative_num_draft_tokens: int = 4
    speculative_eagle_topk: int = 1  # > 1: tree drafts (scheduler/tree_drafter.py)
    speculative_num_steps: Optional[int] = None  # a tree's depth (default: num_draft_tokens - 1)
    speculative_ngram_max_trie_depth: int = 18
    # NGRAM trees (scheduler/ngram_tree.py) when max > 1; the server's default is SGLang's 10
    speculative_ngram_min_bfs_breadth: int = 1
    speculative_ngram_max_bfs_breadth: int = 1
    speculative_ngram_match_type: str = "BFS"
    speculative_ngram_min_match_window_size: int = 1  # NGRAM's shortest match (the chain: 2)
    speculative_ngram_max_match_window_size: Optional[int] = None  # None: trees max_trie_depth
    # - 1; the chain max_trie_depth - num_draft_tokens
    speculative_draft_model_path: Optional[str] = None  # EAGLE / EAGLE3 heads (model_drafter.py)

    @property
    def model_path(self) -> str:
        return self.executor.model_path

    @property
    def trust_remote_code(self) -> bool:
        return self.executor.trust_remote_code
