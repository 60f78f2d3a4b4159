"""docs/server.md's flag table is the one the code generates."""

import dataclasses
import os

from rollserve.frontend.flag_docs import BEGIN, DOC, END, flag_table_markdown, replace_table
from rollserve.frontend.flag_table import FLAG_TABLE
from rollserve.frontend.server_args import ServerArgs
from rollserve.frontend.sglang_flags import SGLANG_FLAGS


def test_docs_table_matches_the_code():
    with open(DOC) as f:
        text = f.read()
    assert replace_table(text, flag_table_markdown()) == text, \
        "docs/server.md is stale: run python -m rollserve.frontend.flag_docs --write"


def test_table_has_a_row_per_flag():
    table = flag_table_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    sglang = {f.dest for f in SGLANG_FLAGS}
    own = [f.name for f in dataclasses.fields(ServerArgs) if f.name not in sglang]
    assert "max_request_body_bytes" in own  # rollserve's own flags get rows after SGLang's
    assert len(rows) == len(SGLANG_FLAGS) + len(own)
    assert "| `--tp-size`, `--tensor-parallel-size`, `--tp` | implemented |" in table
    assert len(FLAG_TABLE) == len(SGLANG_FLAGS)
    assert os.path.isfile(DOC) and BEGIN in open(DOC).read() and END in open(DOC).read()
