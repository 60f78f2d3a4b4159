"""The flag table of docs/server.md, generated from the code (frontend/flag_table.py and
ServerArgs' help) so that the two cannot drift apart:

    python -m rollserve.frontend.flag_docs            # print the table
    python -m rollserve.frontend.flag_docs --write    # replace it in docs/server.md

tests/frontend/test_flag_docs.py fails when docs/server.md holds another table.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections import Counter
from typing import List

from rollserve.frontend import flag_table
from rollserve.frontend.server_args import HELP, ServerArgs, help_with_default
from rollserve.frontend.sglang_flags import SGLANG_FLAGS, SHORT_ALIASES

BEGIN = "<!-- flag-table:begin (generated: python -m rollserve.frontend.flag_docs --write) -->"
END = "<!-- flag-table:end -->"
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ServerArgs)}
DOC = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "server.md")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _names(flag) -> str:
    extra = [a for a, dest in SHORT_ALIASES.items() if dest == flag.dest]
    return ", ".join(f"`{n}`" for n in (flag.name, *[n for n in flag.names if n != flag.name], *extra))


def _row(flag) -> str:
    rule = flag_table.policy(flag.dest)
    if rule.kind == flag_table.IMPLEMENTED:
        what = (help_with_default(HELP[flag.dest], _DEFAULTS[flag.dest]) if flag.dest in HELP
                else "read flags from a YAML file (keys are flag names); the command line wins")
        return f"| {_names(flag)} | implemented | {_cell(what)} |"
    if rule.kind == flag_table.NOOP:
        return f"| {_names(flag)} | no-op | {_cell(rule.reason)} |"
    accepted = rule.accept if rule.accept is not None else (flag.default,)
    group = "refused" if flag.type == "bool" else \
        "refused unless " + " or ".join("unset" if a is None else f"`{a}`" if a != "" else '`""`'
                                        for a in accepted)
    return f"| {_names(flag)} | {group} | {_cell(rule.reason)}; instead: {_cell(rule.instead)} |"


def flag_table_markdown() -> str:
    kinds = Counter(flag_table.policy(f.dest).kind for f in SGLANG_FLAGS)
    lines: List[str] = [
        f"All {len(SGLANG_FLAGS)} flags of SGLang's server_arguments.md (plus a few of older "
        f"releases): {kinds[flag_table.IMPLEMENTED]} implemented, {kinds[flag_table.NOOP]} "
        f"accepted with no effect (logged once at start), {kinds[flag_table.REFUSED]} refused "
        "unless at the value that asks for what rollserve does.", ""]
    section = None
    for flag in SGLANG_FLAGS:
        if flag.section != section:
            section = flag.section
            lines += ["", f"**{section}**", "", "| flag | here | what rollserve does |",
                      "|---|---|---|"]
        lines.append(_row(flag))
    sglang = {f.dest for f in SGLANG_FLAGS}
    own = [f for f in dataclasses.fields(ServerArgs) if f.name not in sglang]
    if own:
        lines += ["", "**rollserve only**", "", "| flag | here | what rollserve does |", "|---|---|---|"]
        lines += [f"| `--{f.name.replace('_', '-')}` | implemented | "
                  f"{_cell(help_with_default(HELP[f.name], f.default))} |" for f in own]
    return "\n".join(lines)


def replace_table(doc_text: str, table: str) -> str:
    start, end = doc_text.index(BEGIN) + len(BEGIN), doc_text.index(END)
    return doc_text[:start] + "\n" + table + "\n" + doc_text[end:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"update {os.path.normpath(DOC)}")
    table = flag_table_markdown()
    if not parser.parse_args().write:
        print(table)
        return
    with open(DOC) as f:
        text = f.read()
    with open(DOC, "w") as f:
        f.write(replace_table(text, table))


if __name__ == "__main__":
    main()
