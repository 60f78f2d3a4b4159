"""Refuses a malformed constraint before it reaches the scheduler: a request's json_schema,
regex or ebnf is parsed with xgrammar here (no tokenizer needed, well under a millisecond for
the grammars people send) and a bad one is a 400 naming the field and xgrammar's reason.

The scheduler compiles the grammar against the vocabulary afterwards (scheduler/grammar.py);
a failure there, which this check makes rare, ends that one request with an abort."""

from __future__ import annotations

import functools
import json
from typing import Optional

from rollserve.core.sampling_params import InvalidRequest, SamplingParams
from rollserve.scheduler.grammar import grammar_error_message


def check_grammar(params: SamplingParams, backend: str) -> None:
    grammar = params.grammar
    if grammar is None:
        return
    kind, text = grammar
    field = f"sampling_params.{kind}"
    if backend == "none":
        raise InvalidRequest(field, "constrained decoding is off on this server "
                                    "(--grammar-backend none)")
    problem = grammar_problem(kind, text)
    if problem:
        raise InvalidRequest(field, problem)


@functools.lru_cache(maxsize=1024)  # RL groups send one schema many times
def grammar_problem(kind: str, text: str) -> Optional[str]:
    """Why the grammar is malformed, or None."""
    if kind == "json_schema":
        try:
            schema = json.loads(text)
        except ValueError as e:
            return f"is not valid JSON: {e}"
        if not isinstance(schema, (dict, bool)):
            return f"a JSON schema is an object (or true/false), got {type(schema).__name__}"
    try:
        import xgrammar
    except ImportError:
        return "constrained decoding needs the xgrammar package (pip install xgrammar)"
    parse = {"json_schema": xgrammar.Grammar.from_json_schema, "regex": xgrammar.Grammar.from_regex,
             "ebnf": xgrammar.Grammar.from_ebnf}[kind]
    try:
        parse(text)
    except Exception as e:  # xgrammar raises RuntimeError (and a few others) with its reason
        return f"invalid {kind.replace('_', ' ')}: {grammar_error_message(e)}"
    return None
