"""The speculative-decoding flags: what they may be, and the scheduler fields they resolve to.

Implemented: --speculative-algorithm NGRAM (prompt / context lookup, no weights), EAGLE /
EAGLE3 (a draft head from --speculative-draft-model-path) and NEXTN (DeepSeek's MTP
layer, from the target's own checkpoint; also SGLang's `EAGLE` with no draft folder on a
DeepSeek model); --speculative-num-steps /
--speculative-num-draft-tokens (how many drafts a step verifies) and
--speculative-ngram-max-trie-depth (NGRAM's match window plus drafts). STANDALONE (a
separate small model) is refused here with one line. --speculative-eagle-topk > 1 makes a
draft model's drafts a tree (scheduler/tree_drafter.py). NGRAM follows SGLang: its breadth is
--speculative-ngram-max-bfs-breadth (SGLang sets topk to it; default 10: a tree,
scheduler/ngram_tree.py; 1: the chain, scheduler/ngram_drafter.py), with
--speculative-ngram-min-bfs-breadth and --speculative-ngram-match-type BFS | PROB (older
releases' match window flags bound the match lengths), and 12 tokens a verify step unless
--speculative-num-draft-tokens (or --speculative-num-steps) says.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

from rollserve.executor.config import DraftSpec
from rollserve.scheduler.ngram_tree import MATCH_TYPES as NGRAM_MATCH_TYPES

logger = logging.getLogger(__name__)

ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")  # SGLang's; all but STANDALONE
HEADS = ("EAGLE", "EAGLE3")  # need --speculative-draft-model-path
DRAFT_MODELS = HEADS + ("NEXTN",)
MTP_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")


def _own_checkpoint(args) -> bool:
    """NEXTN given the target's own folder as its draft path (SGLang fills it in so)."""
    path, model = args.speculative_draft_model_path, args.model_path
    return args.speculative_algorithm == "NEXTN" and bool(model) and \
        os.path.abspath(path) == os.path.abspath(model)


def _drafts_with_mtp(args) -> bool:
    """SGLang's DeepSeek launch line, `--speculative-algorithm EAGLE` with no draft folder:
    the target's own MTP layer drafts (NEXTN), when model_path's config names a DeepSeek."""
    if args.speculative_algorithm != "EAGLE" or args.speculative_draft_model_path:
        return False
    try:
        with open(os.path.join(args.model_path or "", "config.json")) as f:
            architectures = json.load(f).get("architectures") or []
    except (OSError, ValueError):
        return False
    return any(a in MTP_ARCHITECTURES for a in architectures)
DEFAULT_NUM_DRAFTS = 3  # drafts per verify step when neither count is given
NGRAM_DEFAULT_TOKENS = 12  # SGLang's --speculative-num-draft-tokens for NGRAM


def check_speculative(args) -> None:
    """Raises ValueError naming the flag when the speculative settings cannot run."""
    algorithm = args.speculative_algorithm
    if algorithm == "STANDALONE":
        raise ValueError("speculative_algorithm: STANDALONE (a separate small draft model) is not "
                         "implemented; EAGLE, EAGLE3 (draft heads), NEXTN (DeepSeek's MTP layer) "
                         "and NGRAM (prompt lookup, no weights) are")
    if algorithm in HEADS and not args.speculative_draft_model_path and not _drafts_with_mtp(args):
        raise ValueError(f"speculative_draft_model_path: {algorithm} needs the draft head's folder "
                         "(--speculative-draft-model-path); DeepSeek's MTP layer is "
                         "--speculative-algorithm NEXTN")
    if args.speculative_draft_model_path and algorithm not in HEADS and not _own_checkpoint(args):
        raise ValueError(f"speculative_draft_model_path: only EAGLE and EAGLE3 read a draft "
                         f"folder (NEXTN: the model's own), not --speculative-algorithm {algorithm}")
    for name, least in (("speculative_num_steps", 1), ("speculative_num_draft_tokens", 2),
                        ("speculative_ngram_max_trie_depth", 2), ("speculative_eagle_topk", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"{name}: must be >= {least}, got {value}")
    if algorithm == "NGRAM":
        _check_ngram(args)


def _check_ngram(args) -> None:
    low, high = args.speculative_ngram_min_bfs_breadth, args.speculative_ngram_max_bfs_breadth
    if low < 1:
        raise ValueError(f"speculative_ngram_min_bfs_breadth: must be >= 1, got {low}")
    if high < low:
        raise ValueError(f"speculative_ngram_max_bfs_breadth: must be >= "
                         f"--speculative-ngram-min-bfs-breadth ({low}), got {high}")
    if args.speculative_eagle_topk not in (None, high):
        logger.warning("speculative_eagle_topk %s: NGRAM's breadth is "
                       "--speculative-ngram-max-bfs-breadth (%s), as in SGLang, which sets "
                       "topk to it", args.speculative_eagle_topk, high)
    shortest, longest = (args.speculative_ngram_min_match_window_size,
                         args.speculative_ngram_max_match_window_size)
    if shortest < 1:
        raise ValueError(f"speculative_ngram_min_match_window_size: must be >= 1, got {shortest}")
    if longest is not None and not shortest <= longest < args.speculative_ngram_max_trie_depth:
        raise ValueError("speculative_ngram_max_match_window_size: must be >= "
                         f"--speculative-ngram-min-match-window-size ({shortest}) and below "
                         f"--speculative-ngram-max-trie-depth "
                         f"({args.speculative_ngram_max_trie_depth}), got {longest}")
    if high == 1 and longest is None and \
            args.speculative_ngram_max_trie_depth <= num_draft_tokens(args):
        raise ValueError("speculative_ngram_max_trie_depth: must exceed the tokens of a verify "
                         f"step ({num_draft_tokens(args)}): it holds the match window and the drafts")
    # the longest match compared (ngram_tree.make_ngram_drafter): a shortest match above it
    # would leave NGRAM with no drafts at all
    if longest is None:
        depth = args.speculative_ngram_max_trie_depth
        longest = max(2, depth - num_draft_tokens(args)) if high == 1 else max(1, depth - 1)
    if shortest > longest:
        raise ValueError(f"speculative_ngram_min_match_window_size: must be at most the longest "
                         f"match compared ({longest}: --speculative-ngram-max-match-window-size, "
                         f"else from --speculative-ngram-max-trie-depth), got {shortest}")


def num_draft_tokens(args) -> int:
    """Tokens one request brings to a verify step (its last token and the drafts, a chain or
    a tree's nodes): --speculative-num-draft-tokens, else num_steps * topk + 1."""
    if args.speculative_num_draft_tokens is not None:
        return args.speculative_num_draft_tokens
    steps = args.speculative_num_steps
    if args.speculative_algorithm == "NGRAM":  # a chain of num_steps drafts, else SGLang's 12
        return steps + 1 if steps is not None else NGRAM_DEFAULT_TOKENS
    return (steps if steps is not None else DEFAULT_NUM_DRAFTS) * (args.speculative_eagle_topk or 1) + 1


def scheduler_fields(args) -> Dict[str, Any]:
    """SchedulerConfig's speculative fields."""
    algorithm = "NEXTN" if _drafts_with_mtp(args) else args.speculative_algorithm
    return {"speculative_algorithm": algorithm,
            "speculative_num_draft_tokens": num_draft_tokens(args),
            "speculative_eagle_topk": args.speculative_ngram_max_bfs_breadth
            if algorithm == "NGRAM" else args.speculative_eagle_topk or 1,
            # a tree's depth; a chain's length is num_draft_tokens - 1
            "speculative_num_steps": args.speculative_num_steps or DEFAULT_NUM_DRAFTS,
            "speculative_ngram_max_trie_depth": args.speculative_ngram_max_trie_depth,
            "speculative_ngram_min_bfs_breadth": args.speculative_ngram_min_bfs_breadth,
            "speculative_ngram_max_bfs_breadth": args.speculative_ngram_max_bfs_breadth,
            "speculative_ngram_match_type": args.speculative_ngram_match_type,
            "speculative_ngram_min_match_window_size": args.speculative_ngram_min_match_window_size,
            "speculative_ngram_max_match_window_size": args.speculative_ngram_max_match_window_size,
            "speculative_draft_model_path": None if algorithm == "NEXTN"
            else args.speculative_draft_model_path}


def draft_spec(args) -> Optional[DraftSpec]:
    """The draft model the executor loads beside the target (its weights and KV are sized
    inside --mem-fraction-static's budget), or None (NGRAM, or no speculation)."""
    fields = scheduler_fields(args)
    if fields["speculative_algorithm"] not in DRAFT_MODELS:
        return None
    return DraftSpec(fields["speculative_algorithm"], fields["speculative_draft_model_path"],
                     fields["speculative_num_draft_tokens"] - 1, fields["speculative_eagle_topk"],
                     fields["speculative_num_steps"])
