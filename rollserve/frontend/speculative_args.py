"""The speculative-decoding flags: what they may be, and the scheduler fields they resolve to.

Implemented: --speculative-algorithm NGRAM (prompt / context lookup, a chain of drafts),
--speculative-num-steps / --speculative-num-draft-tokens (how many drafts a step
verifies) and --speculative-ngram-max-trie-depth (NGRAM's match window plus drafts).
EAGLE, EAGLE3, NEXTN and STANDALONE need draft models, which are not implemented; they
are refused here with one line, as are tree drafts (frontend/flag_table.py).
"""

from __future__ import annotations

from typing import Any, Dict

ALGORITHMS = ("EAGLE", "EAGLE3", "NEXTN", "STANDALONE", "NGRAM")  # SGLang's; NGRAM implemented
DEFAULT_NUM_DRAFTS = 3  # drafts per verify step when neither count is given


def check_speculative(args) -> None:
    """Raises ValueError naming the flag when the speculative settings cannot run."""
    algorithm = args.speculative_algorithm
    if algorithm is not None and algorithm != "NGRAM":
        raise ValueError(f"speculative_algorithm: {algorithm} needs a draft model (EAGLE heads, "
                         "MTP layers, a small model), which rollserve does not implement; "
                         "--speculative-algorithm NGRAM (prompt lookup, no weights) is")
    for name, least in (("speculative_num_steps", 1), ("speculative_num_draft_tokens", 2),
                        ("speculative_ngram_max_trie_depth", 2)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"{name}: must be >= {least}, got {value}")
    if algorithm is not None and args.speculative_ngram_max_trie_depth <= num_draft_tokens(args):
        raise ValueError("speculative_ngram_max_trie_depth: must exceed the tokens of a verify "
                         f"step ({num_draft_tokens(args)}): it holds the match window and the drafts")


def num_draft_tokens(args) -> int:
    """Tokens one request brings to a verify step (its last token and the drafts, a chain):
    --speculative-num-draft-tokens, else --speculative-num-steps + 1."""
    if args.speculative_num_draft_tokens is not None:
        return args.speculative_num_draft_tokens
    steps = args.speculative_num_steps
    return (steps if steps is not None else DEFAULT_NUM_DRAFTS) + 1


def scheduler_fields(args) -> Dict[str, Any]:
    """SchedulerConfig's speculative fields."""
    return {"speculative_algorithm": args.speculative_algorithm,
            "speculative_num_draft_tokens": num_draft_tokens(args),
            "speculative_ngram_max_trie_depth": args.speculative_ngram_max_trie_depth}
